"""The sample texts the app offers (the text pickers' choices, the corpus page's built-in corpus,
the filler that lengthens a short text for the KV-by-length chart)."""

from mor.analysis.probe import checkpoint_format
from mor.data.addition import sample_pairs

# The arithmetic sample: problems in the format the shipped probe checkpoint was trained on (its
# training.json "probe" record: fixed-width operands, one problem per line, as `mor probe` asks;
# the default three-digit format when that checkpoint is absent), drawn from the probe's held-out
# pairs, so the probe checkpoint never saw them in training.
PROBE_CHECKPOINT = "mor-ec-r3-probe"
try:
    ADDITION = checkpoint_format(PROBE_CHECKPOINT)[0]
except ValueError:  # no such checkpoint here, or an unreadable record (CheckpointError is one)
    from mor.analysis.probe import DEFAULT_FORMAT as ADDITION
ADDITION_PAIRS = sample_pairs(ADDITION.digits, 6, seed=7, held_out=True)

# The opening of Pride and Prejudice (Jane Austen, 1813; public domain). Austen's novels are kept
# out of every training corpus on purpose (mor/data/heldout.py), so this is prose no checkpoint has
# seen; at ~210 tokens it is long enough for the depth caps' NLLs to settle (a 48-token line is
# noisy enough that NLL can rise with depth), which is why the test-time scaling page opens on it.
PRIDE_AND_PREJUDICE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said his lady to him "
    "one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that he had not. \"But it "
    "is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" Mr. Bennet made no "
    "answer. \"Do you not want to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and I "
    "have no objection to hearing it.\" This was invitation enough.")

SAMPLE_TEXTS = {
    "Shakespeare": "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Encyclopedia": "Photosynthesis is the process by which green plants and some other organisms use sunlight "
                    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
                    "chlorophyll and generates oxygen as a by-product.",
    "Numbers and names": "The Treaty of Westphalia was signed in 1648 in the cities of Osnabrück and Münster, "
                         "ending the Thirty Years' War between the Holy Roman Empire and its rivals.",
    "Pride and Prejudice (held out)": PRIDE_AND_PREJUDICE,
    "Arithmetic (addition)": "".join(ADDITION.line(a, b) + "\n" for a, b in ADDITION_PAIRS),
}
