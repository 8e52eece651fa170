"""Page, Corpus statistics: which kinds of token the routers send deep, over a whole corpus (the
validation split, the sample texts or an uploaded file): `mor stats` in the browser."""

import streamlit as st

from app import corpus_stats, widgets

CAPTION = ("Which tokens the routers send deep, over a whole corpus: mean depth and the share at each depth "
           "by token class, by frequency in the training data and by position in the window, the tokens that go "
           "deepest and shallowest, and each router's scores against its threshold. The same numbers as "
           "`mor stats --json`.")


def corpus_text() -> tuple[str, str] | None:
    """(text, where it came from in words) of the chosen corpus, or None (with a message on the
    page) when there is nothing to analyse yet or the upload is not UTF-8 text."""
    options = corpus_stats.sources()
    wanted = widgets.query_default("corpus", options[0])
    source = st.radio("Corpus", options, index=options.index(wanted) if wanted in options else 0,
                      format_func=corpus_stats.SOURCES.get, horizontal=True, key="corpus_source")
    widgets.sync_query(corpus=source)
    if "val" not in options:
        st.caption(f"No validation split at {corpus_stats.VAL_PATH} (build it with `mor data --out data`): the "
                   "default corpus is the app's sample texts.")
    if source != "upload":
        return corpus_stats.builtin_text(source)
    upload = st.file_uploader("A UTF-8 text file", key="corpus_upload",
                              help="Plain text saved as UTF-8, up to the server's upload limit; the first "
                                   f"{corpus_stats.MAX_CHARS:,} characters are analysed.")
    if upload is None:
        st.info("Choose a text file to analyse.")
        return None
    name = corpus_stats.display_name(upload.name)
    try:
        return corpus_stats.decode_upload(upload.getvalue()), f"the uploaded file {name}"
    except ValueError as err:
        st.error(f"{name} cannot be read: {err}")
        return None


def show_overview(result: dict, where: str) -> None:
    cols = st.columns(4)
    cols[0].metric("Tokens", f"{result['tokens']:,}")
    cols[1].metric("Windows", f"{result['windows']:,}", help=f"Overlapping {result['context']}-token windows, as in "
                   "`mor trace`: each token's depth is taken from the window that scores it.")
    cols[2].metric("Mean depth", f"{result['mean_depth']:.3f}", help=f"Out of {result['num_recursions']} recursions.")
    cols[3].metric("Frequency basis", "training counts" if result["frequency"]["basis"] == "training counts"
                   else "token id", help=f"Frequency bands by {result['frequency']['basis']}.")
    st.caption(f"Corpus: {where}.")


def show_groups(result: dict) -> None:
    st.subheader("Depth by token class")
    st.altair_chart(corpus_stats.depth_share_chart(result, "by_class"))
    st.subheader("Depth by frequency in the training data")
    frequency = result["frequency"]
    if frequency["basis"] == "training counts":
        st.caption(f"Bands of frequency rank, counted over {frequency['training_tokens']:,} tokens of "
                   f"{frequency['source']} (the checkpoint's token_counts.json).")
    else:
        st.caption(f"No training counts ({frequency['reason']}), so the bands are by token id: byte-level BPE "
                   "numbers its merges in the order it learned them, most frequent pair first, so a low id is a rough "
                   "proxy for a frequent token (ids 0-255 are mostly single bytes). Create the counts with "
                   "`mor stats --checkpoint NAME --count-tokens data/train.txt`.")
    st.altair_chart(corpus_stats.depth_share_chart(result, "by_frequency_band"))
    st.subheader("Depth by position in the context window")
    st.altair_chart(corpus_stats.position_chart(result))


def show_extremes(result: dict) -> None:
    st.subheader("Tokens that go deepest and shallowest on average")
    st.caption(f"Tokens seen at least {result['min_count']} times, with their counts: a high mean over few "
               "occurrences may be a fluke.")
    left, right = st.columns(2)
    left.markdown("**Deepest**")
    left.dataframe(corpus_stats.extremes_frame(result["deepest"]), hide_index=True)
    right.markdown("**Shallowest**")
    right.dataframe(corpus_stats.extremes_frame(result["shallowest"]), hide_index=True)


def show_router(result: dict) -> None:
    st.subheader("Router scores per step")
    router = result["router"]
    if router["kind"] == "none":
        st.info("This checkpoint has no router: every token takes every recursion.")
        return
    st.caption(f"Score: {router['meaning']}.")
    st.altair_chart(corpus_stats.router_chart(result))
    above = [s for s in router["steps"] if s["above_threshold"] is not None]
    for col, s in zip(st.columns(max(1, len(above))), above):
        col.metric(f"Step {s['step']}: above {s['threshold']:g}", f"{100 * s['above_threshold']:.1f}%",
                   help=f"Share of the {s['evaluated']:,} tokens scored at this step whose score passes the causal "
                        "threshold, so they take the step.")


def main() -> None:
    picked = widgets.page_header("Corpus statistics", CAPTION)
    if picked is None:
        return
    name, info = picked
    corpus = corpus_text()
    mode = widgets.routing_mode_picker(info["routing"])
    min_count = st.slider("Occurrences a token needs to be ranked deepest / shallowest", 1, 20,
                          value=min(max(widgets.query_default("min", 3, int), 1), 20), key="corpus_min_count")
    widgets.sync_query(ckpt=name, mode=mode, min=min_count)
    if corpus is None:
        return
    text, where = corpus
    text, dropped = corpus_stats.cap(text)
    if dropped:
        st.info(f"Only the first {corpus_stats.MAX_CHARS:,} characters are analysed ({dropped:,} more were left out), "
                "so one request cannot tie up the server; `mor stats` on the command line reads the whole file.")
    if not text:
        st.info("The corpus is empty: there are no tokens to measure.")
        return
    result = corpus_stats.get_stats(name, text, mode, min_count)
    show_overview(result, where)
    show_groups(result)
    show_extremes(result)
    show_router(result)
    cols = st.columns(2)
    cols[0].download_button("Statistics (JSON)", corpus_stats.to_json(result), "mor_stats.json", "application/json",
                            key="dl_stats_json")
    cols[1].download_button("Groups (CSV)", corpus_stats.groups_frame(result).to_csv(index=False), "mor_stats.csv",
                            "text/csv", key="dl_stats_csv")


main()
