"""The sample texts the app offers (the text pickers' choices, the corpus page's built-in corpus,
the filler that lengthens a short text for the KV-by-length chart)."""

SAMPLE_TEXTS = {
    "Shakespeare": "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Encyclopedia": "Photosynthesis is the process by which green plants and some other organisms use sunlight "
                    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
                    "chlorophyll and generates oxygen as a by-product.",
    "Numbers and names": "The Treaty of Westphalia was signed in 1648 in the cities of Osnabrück and Münster, "
                         "ending the Thirty Years' War between the Holy Roman Empire and its rivals.",
}
