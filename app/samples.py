"""The sample texts the app offers (the text pickers' choices, the corpus page's built-in corpus,
the filler that lengthens a short text for the KV-by-length chart)."""

from mor.data.addition import AdditionFormat, sample_pairs

# The arithmetic sample: problems in the addition probe's format (three-digit operands, a
# four-digit sum, one problem per line, as `mor probe` and mor-ec-r3-probe's card record it), drawn
# from the probe's held-out pairs, so the probe checkpoint never saw them in training.
ADDITION = AdditionFormat.zero_padded(3)
ADDITION_PAIRS = sample_pairs(3, 6, seed=7, held_out=True)

SAMPLE_TEXTS = {
    "Shakespeare": "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Encyclopedia": "Photosynthesis is the process by which green plants and some other organisms use sunlight "
                    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
                    "chlorophyll and generates oxygen as a by-product.",
    "Numbers and names": "The Treaty of Westphalia was signed in 1648 in the cities of Osnabrück and Münster, "
                         "ending the Thirty Years' War between the Holy Roman Empire and its rivals.",
    "Arithmetic (addition)": "".join(ADDITION.line(a, b) + "\n" for a, b in ADDITION_PAIRS),
}
