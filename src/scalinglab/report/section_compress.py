"""Section 4, compression: held-out code length against D per N beside gzip and xz, the
prequential code of a training run, and the real compressor's ratio and overhead."""

from __future__ import annotations

import dataclasses

import pandas as pd

from scalinglab.report.document import Section, Table, date, num, provenance, size_label, svg_figure
from scalinglab.store import Store

MISSING = ("Not measured yet: `scalinglab compress-vs-data --group STUDY` codes the held-out split with the model at "
           "every D; `scalinglab prequential RUN` measures a run's prequential code; `scalinglab compress-bench` the "
           "real archive's ratio, overhead and speed.")


def build(store: Store, study_id: str | None = None) -> Section:
    section = Section(key="compression", title="Compression")
    _vs_data(store, study_id, section)
    _prequential(store, section)
    _bench(store, section)
    if section.empty:
        section.missing = MISSING
    return section


def _vs_data(store: Store, study_id: str | None, section: Section) -> None:
    from scalinglab.report.compress import compression_vs_data_figure

    rows = store.results("compress-vs-data")
    if not rows:
        return
    frame = pd.DataFrame(rows)
    groups = [g for g in frame["group"].dropna().unique()] if "group" in frame else []
    group = study_id if study_id in groups else (groups[-1] if groups else None)
    if group is not None:
        frame = frame[frame["group"] == group]
    files = frame[frame["split"].str.startswith("file:")]
    splits = frame[~frame["split"].str.startswith("file:")]
    _transfer(files, section)
    if splits.empty:
        return
    # one split (the test split when measured), and the newest measurement of each model
    chosen = "test" if (splits["split"] == "test").any() else splits["split"].iloc[-1]
    frame = splits[splits["split"] == chosen].drop_duplicates(["run_id", "step"], keep="last")
    sizes = {r["n_nonembedding"] for r in store.runs(group=group, kind="branch") if r.get("n_nonembedding")} if group else set()
    section.figures.append(svg_figure(
        compression_vs_data_figure(frame, sizes), "compression_vs_data",
        f"Bits per byte of the {frame['split'].iloc[0]} split ({int(frame['bytes'].iloc[0]):,} bytes, never trained on) "
        "under each model, its ideal code length −log2 p; grey lines: gzip -9 and xz -9 of the same bytes."))
    cooled = frame[frame["cooled"].fillna(True).astype(bool)] if "cooled" in frame else frame
    numbers = {}
    for n, part in cooled.sort_values("d").groupby("n"):
        first, last = part.iloc[0], part.iloc[-1]
        numbers[str(int(n))] = {"D_first": float(first["d"]), "bpb_first": float(first["ideal_bpb"]),
                                "D_last": float(last["d"]), "bpb_last": float(last["ideal_bpb"])}
        section.readings.append(
            f"{size_label(n)} codes held-out text at {num(first['ideal_bpb'])} bits/byte after D = {num(first['d'])} "
            f"tokens and {num(last['ideal_bpb'])} after D = {num(last['d'])}.")
    best = cooled.loc[cooled["ideal_bpb"].idxmin()]
    baselines = {"gzip -9": float(best["gzip-9_bpb"]), "xz -9": float(best["xz-9_bpb"])}
    name = min(baselines, key=baselines.get)
    best_text = f"The best model ({size_label(best['n'])}, D = {num(best['d'])}) needs {num(best['ideal_bpb'])} bits/byte"
    if best["ideal_bpb"] < baselines[name]:
        best_text += f", {num(baselines[name] / best['ideal_bpb'])}x fewer than {name} ({num(baselines[name])})."
    else:
        best_text += (f", still more than {name} ({num(baselines[name])}): a model this small, trained this little, "
                      "has not yet learnt enough of the text's structure to beat a classical coder.")
    section.readings.append(best_text)
    section.numbers["vs_data"] = {"group": group, "sizes": numbers, "model_bpb": float(best["ideal_bpb"]),
                                  "baseline": name, "baseline_bpb": baselines[name]}
    runs = [r for r in (store.get_run(i) for i in frame["run_id"].unique()) if r]
    section.provenance.append(provenance("scalinglab compress-vs-data", runs, f"group {group}" if group else ""))


def _transfer(files: pd.DataFrame, section: Section) -> None:
    """Readings for users' own files: coding text from elsewhere is the direct test of structure."""
    numbers = {}
    for name, rows in files.groupby("split"):
        for n, part in rows.drop_duplicates(["run_id", "step"], keep="last").sort_values("d").groupby("n"):
            first, last = part.iloc[0], part.iloc[-1]
            overlap = first.get("train_overlap")
            seen = (f"; {overlap:.0%} of its 64-byte windows are in the training split, so it is not unseen text"
                    if overlap is not None and overlap == overlap and overlap > 0.05 else "")
            section.readings.append(
                f"On {name[5:]} ({int(first['bytes']):,} bytes from outside the corpus), {size_label(n)} needs "
                f"{num(first['ideal_bpb'])} bits/byte after D = {num(first['d'])} and {num(last['ideal_bpb'])} after "
                f"D = {num(last['d'])} (gzip -9: {num(first['gzip-9_bpb'])}, xz -9: {num(first['xz-9_bpb'])}){seen}.")
            numbers[f"{name}/N{int(n)}"] = {"bpb_first": float(first["ideal_bpb"]), "bpb_last": float(last["ideal_bpb"]),
                                             "D_first": float(first["d"]), "D_last": float(last["d"])}
    if numbers:
        section.numbers["transfer"] = numbers


def _prequential(store: Store, section: Section) -> None:
    from scalinglab.compress.prequential import PrequentialResult
    from scalinglab.report.compress import prequential_figure

    rows = store.results("prequential")
    if not rows:
        return
    row = rows[-1]
    fields = {f.name for f in dataclasses.fields(PrequentialResult)}
    result = PrequentialResult(**{k: v for k, v in row.items() if k in fields})
    section.figures.append(svg_figure(
        prequential_figure(result), "prequential",
        f"Prequential code length of run {result.run_id}'s training stream: each batch coded by the model before "
        "it trained on it, the total is the area under the training-loss curve."))
    section.readings.append(
        f"Coded prequentially, run {result.run_id}'s {result.bytes:,} training bytes take {num(result.bits_per_byte)} "
        f"bits/byte (gzip -9: {num(result.gzip_bpb)}, xz -9: {num(result.xz_bpb)}), after {num(result.epochs)} epochs"
        + (" (branch part only)." if result.partial else "."))
    section.numbers["prequential"] = {"run_id": result.run_id, "bits_per_byte": result.bits_per_byte,
                                      "gzip_bpb": result.gzip_bpb, "xz_bpb": result.xz_bpb}
    run = store.get_run(result.run_id)
    section.provenance.append(provenance("scalinglab prequential", [run] if run else []))


def _bench(store: Store, section: Section) -> None:
    rows = store.results("compress-bench")
    if not rows:
        return
    table = []
    for r in rows[-6:]:
        table.append([r["file"].rsplit("/", 1)[-1], f"{r['bytes']:,}", num(r["actual_bpb"]), num(r["ideal_bpb"]),
                      f"{100 * r['overhead']:.2f}%", num(r.get("gzip-9_bpb")), num(r.get("xz-9_bpb")),
                      "exact" if r["round_trip"] else "FAILED", num(r["encode_Bps"] / 1e3)])
    section.tables.append(Table(
        columns=["file", "bytes", "archive bits/byte", "ideal", "overhead", "gzip -9", "xz -9", "round trip", "encode kB/s"],
        rows=table, caption="The model as a real lossless compressor (`scalinglab compress-bench`): archive size against "
                            "the ideal code length, and the classical coders on the same files."))
    last = rows[-1]
    section.readings.append(
        f"As a real archive the model packs {last['file'].rsplit('/', 1)[-1]} at {num(last['actual_bpb'])} bits/byte, "
        f"{100 * last['overhead']:.2f}% over its ideal code length, and decodes it "
        f"{'exactly' if last['round_trip'] else 'WRONGLY'}.")
    section.numbers["bench"] = [{k: r[k] for k in ("file", "actual_bpb", "ideal_bpb", "overhead", "round_trip")} for r in rows[-6:]]
    section.provenance.append(f"Made by `scalinglab compress-bench` on {date(last.get('created'))} with model {last.get('model')}.")
