"""Hostile input to the app, through Streamlit's AppTest (the real pages, no browser).

Texts: every page that takes text (and the heatmap page's recursion-lens and where-depth-helped
tabs) gets empty text, whitespace only, one character, 50,000 characters, emoji, CJK, right-to-left
scripts, combining marks and control characters with NUL. Each must give no exception and either a
clear message or the right numbers (checked against `mor.analysis` run here).

Files: the Corpus statistics page gets each of those texts as an uploaded UTF-8 file, plus a file
with a UTF-8 byte-order mark, an empty file, binary bytes, UTF-16 and Latin-1 text (a clear error,
nothing analysed) and a file over the page's character cap (analysed up to the cap, which it names).

Checkpoints: $MOR_CHECKPOINTS points at a folder holding one broken copy of a shipped checkpoint
(truncated weights, a pickle in place of the weights, a pickle beside no weights, a config whose
sizes do not match the weights, a config that is not JSON). Every page must show the loader's
message naming the broken file, without a traceback, and never unpickle anything.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

import mor
from mor import analysis

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import corpus_stats as corpus_module  # noqa: E402  (the corpus page's module; AppTest's run shares it)

pytestmark = pytest.mark.slow  # every test runs whole pages on a real checkpoint
MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
PAGES = ("heatmap", "scaling", "kv_memory", "compare", "learn", "throughput", "corpus")
TABS = {"lens": "lens", "gain": "gain"}  # heatmap-page tabs in the text matrix: name -> ?view=
TEXT_PAGES = [p for p in PAGES if p not in ("throughput", "corpus")] + list(TABS)

_SENTENCE = "The quick brown fox jumps over the lazy dog while the river runs to the sea. "
HOSTILE = {
    "empty": "",
    "whitespace": "   \n\t \n  ",
    "one_char": "a",
    "50k_chars": (_SENTENCE * (50_000 // len(_SENTENCE) + 1))[:50_000],
    "emoji": "I 😀 love 🍕 and 👩‍👩‍👧‍👦 families 🇫🇷 flags 👍🏽!",
    "cjk": "中文文本，日本語のテキスト、한국어 텍스트。",
    "rtl": "مرحبا بالعالم שלום עולם \u202eRTL override\u202c done",
    "combining": "e\u0301\u0302\u0303 Z\u0351\u0352\u0353\u0354a\u0308\u0308\u0308 n\u0303",
    "control_nul": "a\x00b\x01c\x1b[31mred\x7f\x08 tab\there\r\nline\x0c\x00end",
}


@pytest.fixture(scope="module")
def shipped(checkpoint_name):
    """(name, folder) of the shipped checkpoint the pages are opened on."""
    return checkpoint_name, mor.resolve_checkpoint(checkpoint_name)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same checkpoint, loaded here; `reference(text)` is the trace the pages should show."""
    model, tokenizer = checkpoint
    cache = {}

    def trace(text: str) -> dict:
        if text not in cache:
            cache[text] = analysis.trace(model, tokenizer, text).to_json()
        return cache[text]

    def lens(text: str) -> dict:
        if ("lens", text) not in cache:
            cache[("lens", text)] = analysis.lens(model, tokenizer, text).to_json()
        return cache[("lens", text)]

    trace.config, trace.lens = model.config, lens
    trace.model, trace.tokenizer = model, tokenizer
    return trace


def open_page(name: str, page: str, **query) -> AppTest:
    """The app on `page` (a file of app_pages/, or one of TABS: that tab of the heatmap page)."""
    at = AppTest.from_file(MAIN, default_timeout=300)
    at.query_params.update(ckpt=name, **query, **({"view": TABS[page]} if page in TABS else {}))
    at.run()
    if page not in ("heatmap", *TABS):
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts_of(elements) -> list[str]:
    return [e.value for e in elements]


def metrics(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def no_exception(at: AppTest, what: str) -> None:
    assert not at.exception, f"{what}: {[e.value for e in at.exception]}"
    assert not at.error, f"{what}: {texts_of(at.error)}"


def set_text(at: AppTest, text: str, label: str = "Text") -> AppTest:
    area = next(a for a in at.text_area if a.label == label)
    return area.set_value(text).run()


# ---- texts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("page", TEXT_PAGES)
def test_hostile_text(shipped, reference, page, kind):
    name, _ = shipped
    text = HOSTILE[kind]
    at = set_text(open_page(name, page), text)
    no_exception(at, f"{page} / {kind}")
    expected = reference(text)
    tokens = len(expected["tokens"])
    context = reference.config.max_position_embeddings
    infos = " ".join(texts_of(at.info))

    if tokens == 0:  # only the empty text tokenizes to nothing
        assert kind == "empty"
        expected_note = "Type some text" if page == "learn" else "The text is empty"
        assert expected_note in infos, f"{page}: no message for an empty text; infos: {infos!r}"
        return
    if kind == "50k_chars":  # traced whole, in overlapping windows, and the page says so
        assert tokens > context and expected["windows"] > 1 and expected["truncated_tokens"] == 0
        assert f"traced whole in {expected['windows']} overlapping windows" in infos, f"{page}: no window notice"
    else:
        assert expected["windows"] == 1 and "overlapping windows" not in infos

    if page in ("heatmap", "scaling"):
        assert metrics(at, "Tokens") == [str(tokens)]
        assert metrics(at, "Mean depth") == [f"{expected['mean_depth']:.3f}"]
        body = "".join(h.proto.body for h in at.html)
        assert body.count('class="mor-tok"') == tokens
    elif page == "compare":  # side A: the router; side B: every token at full depth
        assert metrics(at, "Tokens") == [str(tokens), str(tokens)]
        assert metrics(at, "Mean depth")[0] == f"{expected['mean_depth']:.3f}"
        assert metrics(at, "Mean depth")[1] == f"{reference.config.num_recursions:.3f}"
    elif page == "kv_memory":
        assert f"After a prefill of {min(tokens, context)} tokens" in [s.value for s in at.subheader]
        if tokens > context:
            assert f"its first {context} tokens" in " ".join(texts_of(at.caption))
    elif page == "learn":
        captions = " ".join(texts_of(at.caption))
        assert "tokens whose depth differs between the two rules" in captions
        assert f"for all {tokens} tokens" in captions
        assert any("request 1" in h.proto.body for h in at.html)  # the engine ran on prompts cut from it
    elif page in TABS:
        check_tab(at, page, text, reference)


def check_tab(at: AppTest, page: str, text: str, reference) -> None:
    """The lens / gain tab: one span per token in each heatmap, and the mean NLL at full depth (the
    last step of the lens, cap N_r of the gain) equal to the trace's; "-" with nothing to predict."""
    expected = reference(text)
    R, tokens = reference.config.num_recursions, len(expected["tokens"])
    full = "-" if expected["nll"] is None else f"{expected['nll']:.4f}"
    body = "".join(h.proto.body for h in at.html)
    if page == "lens":
        lens = reference.lens(text)
        rows = [[s["next_token_nll"] for s in row] for row in lens["steps"][:-1]]
        for r in range(R):
            want = "-" if not rows else f"{sum(row[r] for row in rows) / len(rows):.4f}"
            assert metrics(at, f"Mean NLL after step {r + 1}") == [want]
        assert metrics(at, f"Mean NLL after step {R}") == [full]
        assert body.count('class="mor-tok"') == (tokens if R > 1 else 0)
        assert any(s.label == "Token to inspect" for s in at.selectbox)
    else:
        assert metrics(at, "Mean NLL at full depth") == [full]
        assert body.count('class="mor-tok"') == 2 * tokens  # the gain heatmap and the depth heatmap beside it


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_prompt_on_throughput(shipped, reference, kind):
    """The live page decodes 4 tokens for one row from each prompt (no side-by-side table)."""
    name, _ = shipped
    text = HOSTILE[kind]
    at = open_page(name, "throughput")
    at.slider(key="tp_batch").set_value(1)
    at.slider(key="tp_new").set_value(4)
    at.checkbox(key="tp_table").uncheck()
    at = set_text(at, text, label="Prompt")
    at = at.button(key="tp_run").click().run()
    no_exception(at, f"throughput / {kind}")
    if kind == "empty":
        assert any("Type a prompt first" in w for w in texts_of(at.warning))
        return
    assert metrics(at, "Tokens decoded") == ["4"]
    captions = " ".join(texts_of(at.caption))
    if kind == "50k_chars":
        keep = reference.config.max_position_embeddings - 4
        assert f"The prompt was cut to its last {keep} tokens" in captions
    else:
        assert "The prompt was cut" not in captions


# ---- uploaded files -----------------------------------------------------------------------------

_ODD = "é\u0301 😀 中文 مرحبا \u202e ok"
FILES = {  # name: (bytes of the file, the text analysed or None, text the message must contain)
    **{f"utf8-{kind}": (text.encode("utf-8"), text, None) for kind, text in HOSTILE.items() if kind != "empty"},
    "utf8-bom": (("\ufeff" + _ODD).encode("utf-8"), _ODD, None),
    "empty": (b"", None, "The corpus is empty"),
    "binary": (bytes(range(256)) * 4, None, "is not UTF-8 text (byte 128 is 0x80); it may be binary"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", None, "is not UTF-8 text (byte 0 is 0x89)"),
    "utf16": ("hello, world".encode("utf-16"), None, "This file is UTF-16 text"),
    "latin1": ("café au lait".encode("latin-1"), None, "is not UTF-8 text (byte 3 is 0xe9)"),
}
FILE_CAP = 20_000  # the page's character cap, lowered for the test so a "huge" file stays quick


@pytest.fixture
def corpus_view(monkeypatch):
    """The corpus page's module (shared with AppTest's run of the page), its cap lowered to FILE_CAP."""
    monkeypatch.setattr(corpus_module, "MAX_CHARS", FILE_CAP)
    return corpus_module


def upload(name: str, data: bytes) -> AppTest:
    at = open_page(name, "corpus", corpus="upload")
    return at.file_uploader(key="corpus_upload").upload("hostile.txt", data, "text/plain").run()


@pytest.mark.parametrize("kind", FILES)
def test_hostile_upload(shipped, reference, corpus_view, kind):
    name, _ = shipped
    data, text, message = FILES[kind]
    at = upload(name, data)
    assert not at.exception, f"corpus / {kind}: {[e.value for e in at.exception]}"
    shown = " ".join(texts_of(at.error) + texts_of(at.info))
    if text is None:  # a clear message, and nothing analysed
        assert message in shown, f"corpus / {kind}: {shown!r}"
        assert not metrics(at, "Tokens")
        return
    assert not at.error, texts_of(at.error)
    capped = text[:FILE_CAP]
    assert (f"Only the first {FILE_CAP:,} characters are analysed" in shown) == (len(text) > FILE_CAP)
    expected = analysis.corpus_stats(reference.model, reference.tokenizer, capped)
    assert metrics(at, "Tokens") == [f"{expected['tokens']:,}"]
    assert metrics(at, "Mean depth") == [f"{expected['mean_depth']:.3f}"]


def test_huge_upload_is_capped(shipped, reference, corpus_view):
    """A 4 MB file: analysed up to the cap, which the page names."""
    name, _ = shipped
    text = HOSTILE["50k_chars"] * 80
    at = upload(name, text.encode("utf-8"))
    assert not at.exception and not at.error
    assert any(f"Only the first {FILE_CAP:,} characters are analysed ({len(text) - FILE_CAP:,} more were left out)"
               in i for i in texts_of(at.info))
    expected = analysis.corpus_stats(reference.model, reference.tokenizer, text[:FILE_CAP])
    assert metrics(at, "Tokens") == [f"{expected['tokens']:,}"]


def test_upload_name_is_never_markup(shipped, corpus_view):
    """A file name holding markup, a link and a backtick is shown as plain code, with the markup
    characters replaced, in both the caption and the error."""
    name, _ = shipped
    at = open_page(name, "corpus", corpus="upload")
    hostile = "<b>x</b>[y](javascript:alert(1))`z`.txt"
    shown = "`_b_x__b__y__javascript_alert_1___z_.txt`"
    at = at.file_uploader(key="corpus_upload").upload(hostile, b"Plain text.", "text/plain").run()
    assert not at.exception and f"Corpus: the uploaded file {shown}." in texts_of(at.caption)
    at = at.file_uploader(key="corpus_upload").upload(hostile, b"\xff\xfe\x00", "text/plain").run()
    assert texts_of(at.error) == [f"{shown} cannot be read: This file is UTF-16 text. Save it as UTF-8 and upload it again."]


# ---- broken checkpoints ----------------------------------------------------------------------

class _Boom:
    """Unpickling this runs `open(marker, "w")`: proof, if the marker appears, that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])


def _pickle_as_safetensors(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(pickle.dumps({"state_dict": _Boom(folder.parent / "UNPICKLED")}))


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(folder.parent / "UNPICKLED")))


def _wrong_intermediate_size(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 64
    (folder / "config.json").write_text(json.dumps(config))


def _config_not_json(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "mor", "hidden_size": ')


BROKEN = {  # name: (how the copy is broken, text the error must contain)
    "truncated-weights": (_truncate, "model.safetensors is not a readable safetensors file"),
    "pickle-as-safetensors": (_pickle_as_safetensors, "model.safetensors is not a readable safetensors file"),
    "pickle-only": (_pickle_only, "pytorch_model.bin, a pickle format this project never loads"),
    "wrong-intermediate-size": (_wrong_intermediate_size,
                                "model.safetensors does not match config.json: shape mismatches"),
    "config-not-json": (_config_not_json, "config.json is not valid JSON"),
}


@pytest.fixture(params=list(BROKEN))
def broken(request, shipped, tmp_path, monkeypatch):
    """MOR_CHECKPOINTS -> a folder holding one broken copy (named `broken-<kind>`) of the checkpoint."""
    kind = request.param
    _, source = shipped
    folder = tmp_path / "ckpts" / f"broken-{kind}"
    shutil.copytree(source, folder)
    BROKEN[kind][0](folder)
    monkeypatch.setenv("MOR_CHECKPOINTS", str(folder.parent))
    yield folder, BROKEN[kind][1]
    assert not (folder.parent / "UNPICKLED").exists(), "a pickle was unpickled"


@pytest.mark.parametrize("page", PAGES)
def test_broken_checkpoint_shows_a_clear_error(broken, page):
    folder, message = broken
    at = open_page(folder.name, page)
    assert not at.exception, [e.value for e in at.exception]
    errors = texts_of(at.error)
    assert errors, f"{page}: no error shown for {folder.name}"
    error = errors[0]
    assert message in error, error
    assert str(folder) in error  # names the file, with its folder
    assert "Traceback" not in error


def test_good_checkpoints_still_load_beside_a_broken_one(shipped, tmp_path, monkeypatch):
    """A broken folder under MOR_CHECKPOINTS does not stop the app from using a good one."""
    name, source = shipped
    folder = tmp_path / "ckpts" / "broken-copy"
    shutil.copytree(source, folder)
    _truncate(folder)
    monkeypatch.setenv("MOR_CHECKPOINTS", str(folder.parent))
    at = open_page(name, "heatmap")
    no_exception(at, "heatmap with a good checkpoint")
    assert metrics(at, "Tokens")
