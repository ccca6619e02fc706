"""``results.md``: a run's results (``results.json``'s dict) as markdown tables.

Pure formatting: every figure comes from the results dict, so the tables
``benchmarks.run`` writes are the run's and nothing else.
"""

from __future__ import annotations

import math

#: Goals, as speedups of jaxembed over the reference on the same machine and run.
GOALS = {"data": 10.0, "train": 2.0, "train_floor": 3.0}


def fmt(x, digits: int = 2) -> str:
    """``x`` with thousands separators and ``digits`` decimals; ``–`` for None, NaN or inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _goal(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "not met")


def _mib(n_bytes) -> str:
    return fmt(n_bytes / 2**20, 1) if n_bytes is not None else "–"


def markdown(results: dict) -> str:
    """The whole report: header, then one section per measured section."""
    lines = _header(results)
    for name, section in (
        ("data", _data),
        ("embed", _embed),
        ("train", _train),
        ("sweep", _sweep),
        ("memory", _memory),
        ("mesh", _mesh),
        ("corpus", _corpus),
        ("prototypes", _prototypes),
        ("main", _main_job),
    ):
        if results.get(name):
            lines += section(results[name]) + [""]
    if not results["settings"]["reference"]:
        lines += ["The reference was not run (torch is not installed, or `--no-reference`): jaxembed alone.", ""]
    return "\n".join(lines)


def _main_job(result: dict) -> list[str]:
    from benchmarks import main_job

    return ["## The main job (`jaxembed train --workdir W`): where the wall time goes", "", *main_job.markdown(result)]


def _header(results: dict) -> list[str]:
    hw, m, v = results["hardware"], results["machine"], results["versions"]
    probes = results.get("hardware_probes", [hw])
    first = probes[0]
    lines = [
        f"Run {results['started']} · `{results['command']}` · {results['settings']['reps']} repetitions "
        f"(medians), warm-up {results['settings']['warmup']} · {results.get('wall_s', math.nan):.0f} s",
        "",
        f"Machine: {m['cpu']}, nproc {m['nproc']} (XLA uses {m['threads_used']} threads"
        + (", torch as many" if results["settings"]["reference"] else "")
        + f"), {m['memory_GiB']} GiB; Python {m['python']}; "
        + ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "grain", "numpy", "torch")),
        f"Load average at start / end: {results['load_start']} / {results.get('load_end')}",
        "",
        f"Hardware probes (best of {len(probes)} probe(s) of {first.get('tries', '?')} tries each): copy "
        f"bandwidth **{hw['bandwidth_Bps'] / 1e9:.1f} GB/s** (bytes read + written by a {first.get('copy_MiB', '?')} "
        f"MiB numpy copy); float32 {first.get('matmul_n', '?')}² matmul **{hw['matmul_flops']['numpy'] / 1e9:.1f} "
        f"GFLOP/s** numpy, **{hw['matmul_flops']['xla'] / 1e9:.1f} GFLOP/s** XLA (floors use the faster). Per probe: "
        + "; ".join(
            f"{p['bandwidth_Bps'] / 1e9:.1f} GB/s, {p['matmul_flops']['peak'] / 1e9:.0f} GFLOP/s" for p in probes
        )
        + ".",
        "",
    ]
    if "equivalence" in results:
        e = results["equivalence"]
        lines += [
            f"Reference check: from the same parameters, after {e['steps']} AdamW steps the losses differ by "
            f"{e['loss_max_abs_diff']:.1e} and the token tables by {e['token_table_max_abs_diff']:.1e} "
            f"(they moved {e['table_moved']:.1e}); input embeddings differ by "
            f"{e['input_embedding_max_abs_diff']:.1e}.",
            "",
        ]
    if "equivalence_attention" in results:
        e = results["equivalence_attention"]
        lines += [
            f"With one attention layer of 4 heads (its weights copied too): losses {e['loss_max_abs_diff']:.1e}, "
            f"token tables {e['token_table_max_abs_diff']:.1e}, position tables "
            f"{e['position_table_max_abs_diff']:.1e} apart after {e['steps']} steps.",
            "",
        ]
    return lines


def _data(rows: list[dict]) -> list[str]:
    lines = [
        "### Data pipeline: one shuffled epoch over the corpus",
        "",
        "| (max_length, stride, batch) | batches | jaxembed tok/s | reference tok/s | speedup (goal ≥ 10x) "
        "| build: jaxembed / reference | floor tok/s | jaxembed time / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = r.get("speedup_vs_reference")
        lines.append(
            f"| ({r['max_length']}, {r['stride']}, {r['batch']}) | {r['batches']:,} | "
            f"{fmt(r['jaxembed_tokens_per_s'] / 1e6)} M | {fmt(r.get('reference_tokens_per_s', math.nan) / 1e6, 3)} M | "
            f"{fmt(speed, 1)}x {_goal(speed >= GOALS['data']) if speed else ''} | "
            f"{fmt(r.get('jaxembed_build_s', math.nan) * 1e3)} ms / {fmt(r.get('reference_build_s', math.nan) * 1e3, 1)} ms | "
            f"{fmt(r['tokens_per_unit'] / r['floor_s'] / 1e6, 0)} M | {fmt(r['jaxembed_x_floor'], 1)}x |"
        )
    return lines


def _embed(rows: list[dict]) -> list[str]:
    lines = [
        "### InputEmbedding forward",
        "",
        "| ids, width, vocabulary | jaxembed | reference | speedup | floor | jaxembed time / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']}, V={r['vocab']:,} | {fmt(r['jaxembed_s'] * 1e6, 1)} µs | "
            f"{fmt(r.get('reference_s', math.nan) * 1e6, 1)} µs | {fmt(r.get('speedup_vs_reference'))}x | "
            f"{fmt(r['floor_s'] * 1e6, 1)} µs | {fmt(r['jaxembed_x_floor'], 1)}x |"
        )
    return lines


def _train(rows: list[dict]) -> list[str]:
    lines = [
        "### Train step (`Trainer.step`: tied model, AdamW + global-norm clipping)",
        "",
        "PyTorch: AdamW as it defaults (the seed's users), fused AdamW, and the loss through `torch.compile` "
        "with fused AdamW (what a PyTorch user after speed picks). Speedup = that time / jaxembed's.",
        "",
        "| case | jaxembed | PyTorch (AdamW default) | PyTorch (AdamW fused) | PyTorch (compiled + fused) "
        "| vs default | vs fastest PyTorch (goal ≥ 2x) | floor (matmul + optimiser) | jaxembed / floor (goal ≤ 3x) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        t, fastest = r["floor_terms"], r.get("speedup_vs_fastest_reference")
        lines.append(
            f"| {r['case']} | {fmt(r['jaxembed_s'] * 1e3, 1)} ms | "
            f"{fmt(r.get('reference_s', math.nan) * 1e3, 1)} ms | {fmt(r.get('reference_fused_s', math.nan) * 1e3, 1)} ms | "
            f"{fmt(r.get('reference_compiled_s', math.nan) * 1e3, 1)} ms | "
            f"{fmt(r.get('speedup_vs_reference'))}x | "
            f"{fmt(fastest)}x {_goal(fastest >= GOALS['train']) if fastest else ''} | "
            f"{fmt(r['floor_s'] * 1e3, 1)} ms ({fmt(t['compute_s'] * 1e3, 1)} + {fmt(t['memory_s'] * 1e3, 1)}) | "
            f"{fmt(r['jaxembed_x_floor'])}x {_goal(r['jaxembed_x_floor'] <= GOALS['train_floor'])} |"
        )
    names = ("jaxembed", "reference", "reference_fused", "reference_compiled")
    cpu_names = [n for n in names if any(f"{n}_sys_s" in r for r in rows)]
    if cpu_names:
        lines += [
            "",
            "CPU time per step, user + kernel (sys), every thread of the process (`os.times()`, medians): kernel time "
            "is mostly page faults on fresh buffers (glibc `mmap`s any allocation above 32 MiB), not arithmetic.",
            "",
            "| case | " + " | ".join(f"{n} user + sys (sys share)" for n in cpu_names) + " |",
            "| --- |" + " ---: |" * len(cpu_names),
        ]
        for r in rows:
            cells = []
            for n in cpu_names:
                user, sys_s = r.get(f"{n}_user_s"), r.get(f"{n}_sys_s")
                if user is None:
                    cells.append("")
                    continue
                share = sys_s / (user + sys_s) if user + sys_s > 0 else math.nan
                cells.append(f"{fmt(user * 1e3, 1)} + {fmt(sys_s * 1e3, 1)} ms ({fmt(100 * share, 0)}%)")
            lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    tiled = [r for r in rows if "tiled_over_dense" in r]
    if tiled:
        lines += [
            "",
            "Tiled vs dense loss (`model.loss_tile_tokens`; same state, batch and floor, alternating "
            "repetitions; a tile holding the whole batch runs the dense program). First loss: the first step "
            "from the same initial state.",
            "",
            "| case | variant | tile | step | / dense (goal ≤ 1.0) | / floor | first loss |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        names = {"jaxembed_dense": "dense", "jaxembed": "default", "jaxembed_tiled": "tiled (4 tiles)"}
        for r in tiled:
            dense = r["jaxembed_dense_s"]
            for impl, label in names.items():
                ratio = r[f"{impl}_s"] / dense
                tile = r["loss_tile_tokens"][impl]
                if impl == "jaxembed_dense":
                    goal = ""
                elif tile >= r["batch"] * r["length"]:  # the whole batch fits one tile: the dense program
                    goal = " (dense program)"
                else:
                    goal = f" {_goal(ratio <= 1.0)}"
                lines.append(
                    f"| {r['case']} | {label} | {r['loss_tile_tokens'][impl]:,} | {fmt(r[f'{impl}_s'] * 1e3, 1)} ms | "
                    f"{fmt(ratio, 3)}{goal} | {fmt(r[f'{impl}_x_floor'])}x | {r['first_loss'][impl]:.6f} |"
                )
    return lines


def _sweep(s: dict) -> list[str]:
    f = s["fit"]
    lines = [
        f"### How cost grows: jaxembed train step, batch {s['batch']}, width {s['features']}",
        "",
        f"Fit over these points: t = {f['fixed_s'] * 1e3:.2f} ms + matmul FLOPs / "
        f"{fmt(f['effective_GFLOPs'], 1)} GFLOP/s + AdamW bytes / {fmt(f['effective_table_GBps'], 1)} GB/s. "
        "The second term stands for all work proportional to the table (V x D) whatever the tokens per step: "
        "AdamW's sweep, the dense gradient buffer, clipping. The two terms are equal at "
        f"**{fmt(f['crossover_tokens_per_step'], 0)} tokens per step**. Plot: `sweep.png`.",
        "",
        "| vocabulary | context | step | floor | step / floor | matmul share | table-sized share | dominant |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['vocab']:,} | {r['length']} | {fmt(r['jaxembed_s'] * 1e3, 1)} ms | {fmt(r['floor_s'] * 1e3, 1)} ms | "
            f"{fmt(r['jaxembed_x_floor'])}x | {100 * r['shares']['matmul']:.0f}% | "
            f"{100 * r['shares']['table']:.0f}% | {r['dominant']} |"
        )
    return lines


def _memory(mem: dict) -> list[str]:
    lines = [
        "### Memory of the train step",
        "",
        "XLA's buffer plan for `Trainer(...).compiled_step` (`memory_analysis()`, MiB): temporaries; "
        "arguments / outputs (the outputs' aliased part reuses the donated state); *live* = arguments + "
        "temporaries + outputs not aliased, an upper bound on what one step holds. Compiled only, never run, "
        "for gpt2_small. One row per step variant; *tiles*: how many tiles the loss runs in (1: the dense program).",
        "",
        "| case | variant | tile | tiles | temp | args / outputs (aliased) | live |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in mem["xla"]:
        lines.append(
            f"| {r['case']} | {r['variant']} | {r.get('loss_tile_tokens', 0):,} | {r.get('tiles', 1):,} | "
            f"{_mib(r['temp_bytes'])} | {_mib(r['argument_bytes'])} / {_mib(r['output_bytes'])} "
            f"({_mib(r['alias_bytes'])}) | {_mib(r['live_bytes'])} |"
        )
    p = mem.get("plan")
    if p:
        lines += [
            "",
            f"`jaxembed.train.plan.plan` of {p['case']} (tile {p['loss_tile_tokens']:,}): temporaries "
            f"**{_mib(p['temp_bytes'])} MiB**, peak (arguments + outputs − aliased + temporaries) "
            f"{_mib(p['peak_bytes'])} MiB, {fmt(p['flops_per_step'] / 1e12, 2)} TFLOP per step "
            f"(XLA's raw count, loop bodies once: {fmt(p['xla_flops'] / 1e12, 2)}).",
        ]
    if mem.get("rss"):
        lines += [
            "",
            "Measured in a fresh process per case and variant (MiB above the idle process with its framework "
            "imported; `/proc/self/clear_refs` resets the high-water mark, since `memory_stats()` is None on CPU): "
            "*resident* after building the step and running it once, *peak* while running 2 more steps, "
            "*setup peak* while building and compiling. Variants that run the dense program at a size are not "
            "run again.",
            "",
            "| case | variant | resident | peak | setup peak |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for r in mem["rss"]:
            if "error" in r:
                lines.append(f"| {r['case']} | {r['variant']} | failed | – | – |")
            else:
                lines.append(
                    f"| {r['case']} | {r['variant']} | {fmt(r['resident_MiB'], 1)} | {fmt(r['peak_MiB'], 1)} | "
                    f"{fmt(r['setup_peak_MiB'], 1)} |"
                )
    return lines


def _corpus(c: dict) -> list[str]:
    lines = [
        "### Corpus: tokenizing into a token file, and training from it",
        "",
        f"A synthetic corpus of python-docs paragraphs in a fresh random order per file ({c['file_MB']} MB files), "
        "written to a temporary directory and deleted afterwards. Each figure is from a fresh child process; "
        "peak = the process's `VmHWM` (reset just before the call), *+* = above its resident set at that moment.",
        "",
        "| corpus | tokens | tokenizer | seconds | Mtok/s | peak RSS MiB (+ above) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for size in c["sizes"]:
        for r in size["tokenize"]["rows"]:
            lines.append(
                f"| {size['bytes'] / 1e6:,.1f} MB, {size['files']} files | {r['tokens']:,} | {r['impl']} | "
                f"{fmt(r['seconds'])} | {fmt(r['tokens_per_s'] / 1e6)} | {fmt(r['peak_MiB'], 1)} "
                f"(+{fmt(r['peak_above_MiB'], 1)}) |"
            )
    lines += [
        "",
        f"Training: `train_and_evaluate(named_config('tiny'), None)`, {c['train_steps']} steps, from `data.tokens` "
        "(the memory-mapped `tokens.npy`) or from `text=` (read and tokenized into an in-memory int32 array; "
        "reading the text is inside the measurement). Steady tok/s: median of the metrics rows after the first. "
        "*After*: the resident set when `train_and_evaluate` returns (its splits still alive), anonymous / "
        "file-backed (pages of the memory-mapped token file: clean, the kernel can drop them).",
        "",
        "| corpus | source | ids | steady tok/s | wall s | peak RSS MiB (+ above idle) | after: anon / file MiB "
        "| final train loss |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in c["sizes"]:
        for source, r in size["train"].items():
            ids = f"{r['ids_dtype']}" + (", memory-mapped" if r["memory_mapped"] else ", in memory")
            lines.append(
                f"| {size['bytes'] / 1e6:,.1f} MB | {source} | {ids} | {fmt(r['tokens_per_s'], 0)} | "
                f"{fmt(r['seconds'], 1)} | {fmt(r['peak_MiB'], 1)} (+{fmt(r['peak_above_MiB'], 1)}) | "
                f"{fmt(r.get('after_anon_MiB'), 1)} / {fmt(r.get('after_file_MiB'), 1)} | {r['final_train_loss']:.4f} |"
            )
    return lines


def _mesh(mesh: dict) -> list[str]:
    lines = [
        f"### Data-parallel mesh ({mesh['device_count']} simulated CPU devices sharing this host's cores)",
        "",
        "| config | devices | step | vs one device |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in mesh["rows"]:
        lines.append(f"| {r['case']} | {r['devices']} | {fmt(r['step_s'] * 1e3, 1)} ms | {fmt(r['x_one_device'])}x |")
    return lines


def _prototypes(rows: list[dict]) -> list[str]:
    lines = [
        "### Prototypes (benchmarks/prototypes.py; alternating with jaxembed as it is)",
        "",
        "| variant | case | jaxembed today | prototype | speedup vs today | speedup vs reference | same result? |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        proto = r["proto"] + (f" ({r['x_floor']:.1f}x its floor)" if r.get("x_floor") else "")
        lines.append(
            f"| {r['variant']} | {r['case']} | {r['today']} | {proto} | {fmt(r.get('speedup_vs_jaxembed'))}x | "
            f"{fmt(r.get('speedup_vs_reference'))}x | {r['exact']} |"
        )
    return lines
