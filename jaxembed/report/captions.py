"""The words of the run report: its summary lines and a caption for every picture.

Pure text from the numbers ``jaxembed.report.writer.report_numbers`` computes (the
keys of ``report.json``), so the report explains each picture with the
run's own figures: what it shows, how to read it, and what this run shows.

Example:
  >>> numbers = {"steps": 300, "val_loss_initial": 10.8, "val_loss_final": 5.4, "val_loss_best": 5.4,
  ...            "val_loss_best_step": 300, "overfitting_from_step": None, "overfit_margin": 0.02,
  ...            "overfit_evals_above": 0, "overfit_min_evals": 3, "val_loss_noise": None, "overfit_margin_floor": 0.02,
  ...            "val_loss_positions_shuffled": None, "position_locality": 0.57, "position_locality_initial": -0.02,
  ...            "median_tokens_per_sec": None, "num_classes": 50257, "uniform_guess_loss": 10.825}
  >>> summary_lines(numbers, length=16)[1]
  'validation loss: 10.800 (step 0) -> 5.400 (step 300); best 5.400 at step 300'
  >>> "uniformly red" in captions(numbers, num_layers=0, length=16, pca_count=100)[POSITIONS]
  True
"""

from __future__ import annotations

from jaxembed.report.plots import MAX_NEIGHBOR_ROWS

LOSS = "Loss curves"
NEIGHBORS = "Nearest neighbours before and after training"
PCA = "Token embeddings, first two principal components"
POSITIONS = "Positional embeddings: cosine similarity"
POSITION_PATH = "Positional embeddings: the path through positions"
BY_LENGTH = "Validation loss by evaluation length"

#: What each scheme of ``model.position`` is, in the report's words (``jaxembed.nn.positions``).
POSITION_WORDS: dict[str, str] = {
    "learned": "a learned table, one trained vector per position (GPT-2's)",
    "sinusoidal": "a fixed sin/cos table added to the token vectors (Vaswani et al. 2017): computed, not trained",
    "rope": "RoPE, rotary: queries and keys turned by an angle proportional to their position (Su et al. 2021)",
    "alibi": "ALiBi: a penalty on attention logits linear in the query-key distance (Press et al. 2022)",
    "none": "none: causal attention alone (Haviv et al. 2022)",
}


def blank_sample_note(sampled: str, blank_token_share: float) -> str | None:
    r"""A line under the report's text samples when the trained model wrote mostly spaces and line breaks.

    ``sampled`` is the text the trained model added after the prompt; ``blank_token_share`` the share of
    training tokens that are only whitespace (``analysis.blank_token_share``). ``None`` when at most
    half of ``sampled`` is whitespace: the sample then speaks for itself.

    Example:
      >>> blank_sample_note("      \n  ok", 0.18)[:76]
      '(after training, 82% of the text is spaces and line breaks, as 18% of the tr'
      >>> blank_sample_note("O Romeo, Romeo", 0.18) is None
      True
    """
    if not sampled:
        return None
    blank = sum(ch.isspace() for ch in sampled) / len(sampled)
    if blank <= 0.5:
        return None
    return (
        f"(after training, {blank:.0%} of the text is spaces and line breaks, as {blank_token_share:.0%} of the "
        "training tokens are (indentation, line ends): the commonest tokens are what a young model predicts "
        "first. A prompt of words, jaxembed sample --workdir W --prompt TEXT, shows what it writes after words.)"
    )


def by_length_table(by_length: dict, position: str, length: int) -> str:
    """The held-out loss at ``L``, ``2L`` and ``4L`` as a text table, with why a learned table stops at ``L``.

    Example:
      >>> print(by_length_table({"16": 5.43}, "learned", 16))
      evaluation length   validation loss
                     16             5.430
                     32                 -
                     64                 -
      (a learned table has one row per trained position, 16, and none beyond: nothing to evaluate past it)
    """
    rows = ["evaluation length   validation loss"]
    for factor in (1, 2, 4):
        loss = by_length.get(str(factor * length))
        rows.append(f"{factor * length:>17}   {'-' if loss is None else f'{loss:.3f}':>15}")
    if position == "learned":
        rows.append(
            f"(a learned table has one row per trained position, {length}, and none beyond: nothing to evaluate "
            "past it)"
        )
    else:
        missing = [str(f * length) for f in (2, 4) if str(f * length) not in by_length]
        if missing:
            rows.append(f"(the held-out split is too short for a batch of windows of {' or '.join(missing)})")
    return "\n".join(rows)


def _position_caption(numbers: dict, num_layers: int | None, length: int) -> str:
    locality, initial = numbers["position_locality"], numbers["position_locality_initial"]
    how = (
        f"Each cell (i, j) is the cosine similarity between the vectors of positions i and j (red: alike, blue: "
        f"opposite, white: unrelated); the diagonal is 1 by definition. The number in each title is the "
        f"*locality*: mean cosine of adjacent positions minus mean cosine of positions at least {length / 2:g} "
        f"apart (0 means no sense of order). Untrained: {initial:+.2f}; trained: {locality:+.2f}."
    )
    if numbers.get("position") == "sinusoidal":
        return how.split(" Untrained:")[0] + (
            f" This run's table is sinusoidal ({locality:+.2f}): fixed by a formula, never trained, so the "
            "band along the diagonal is there from step 0 and the same for any corpus; only the token vectors and "
            "attention learn to use it."
        )
    if num_layers == 0:
        return how + (
            " This model has no attention layer (`model.num_layers = 0`): each output depends only on its own "
            "token and its own position vector, and nothing mixes positions. A position vector can then only shift "
            "the prediction towards tokens that are common at that position, and in running text every position "
            "sees the same token frequencies, so no position-specific signal reaches the loss: every position "
            "learns the same vector and the trained map is uniformly red, however long it trains."
        )
    return how + (
        " With attention, a token's prediction mixes the tokens before it, and the positional vectors are how "
        "the model tells them apart; a band of red along the diagonal fading away from it means nearby positions "
        "got similar vectors: the table has learned an order from scratch, since nothing told it that 3 is "
        "next to 4."
    )


def sigma_sentence(centred: dict) -> str:
    """One sentence on reading a neighbour's ``(3.1σ)``, with this table's baseline and ceiling.

    ``centred`` is ``report.json``'s ``random_pair_cosine_centred`` (``{"mean", "std"}``).

    Example:
      >>> print(sigma_sentence({"mean": 0.01, "std": 0.3}).split("; ")[1])
      as a cosine cannot exceed 1, no neighbour on this table can stand more than (1 - mean) / σ = 3.3σ above it, and one near that ceiling is as close as this table allows.
    """
    mean, std = centred.get("mean"), centred.get("std")
    if mean is None or not std:
        return ""
    return (
        f"After training, the number in brackets after each neighbour, such as (1.2σ), is how many standard "
        f"deviations σ of that random-pair cosine (σ = {std:.2f} here) it lies above the random-pair mean; as a "
        f"cosine cannot exceed 1, no neighbour on this table can stand more than (1 - mean) / σ = "
        f"{(1 - mean) / std:.1f}σ above it, and one near that ceiling is as close as this table allows."
    )


def _margin_rule(numbers: dict) -> str:
    noise = numbers.get("val_loss_noise")
    how = (
        f"{numbers['overfit_margin']:.3f} nats, the larger of {numbers['overfit_margin_floor']} and "
        f"{numbers.get('overfit_noise_factor', 2):g} x the "
        f"evaluation noise {noise:.3f} (spread of the change between consecutive evaluations late in the run)"
        if noise is not None
        else f"{numbers['overfit_margin']:.3f} nats (too few evaluations to estimate their noise)"
    )
    return f"the last {numbers['overfit_min_evals']} evaluations all more than {how} above the best"


def _times(count: int) -> str:
    return "never seen" if count == 0 else "seen once" if count == 1 else f"seen {count:,} times"


def summary_lines(numbers: dict, length: int) -> list[str]:
    """The report's bullet points: losses, the held-out split, overfitting, dropped probes, positions, speed, ln K.

    Example:
      >>> numbers = {"steps": 60, "val_loss_initial": 10.8, "val_loss_final": 5.43, "val_loss_best": 5.40,
      ...            "val_loss_best_step": 50, "overfitting_from_step": None, "overfit_margin": 0.02,
      ...            "overfit_margin_floor": 0.02, "val_loss_noise": None, "overfit_evals_above": 1,
      ...            "overfit_min_evals": 3, "val_loss_positions_shuffled": None, "position_locality": 0.5,
      ...            "position_locality_initial": 0.0, "median_tokens_per_sec": None, "num_classes": 9,
      ...            "uniform_guess_loss": 2.197, "validation_source": "the last 10% of the tokens of a.txt"}
      >>> print(summary_lines(numbers, length=16)[3])
      no overfitting verdict: the last evaluation is 0.030 nats above the best, but the rule needs the last 3 evaluations all more than 0.020 nats (too few evaluations to estimate their noise) above the best; 1 of the last 3 is
    """
    lines = [f"steps: {numbers['steps']}"]
    if numbers["val_loss_initial"] is not None:
        lines.append(
            f"validation loss: {numbers['val_loss_initial']:.3f} (step 0) -> {numbers['val_loss_final']:.3f} "
            f"(step {numbers['steps']}); best {numbers['val_loss_best']:.3f} at step {numbers['val_loss_best_step']}"
        )
    evaluated, source = numbers.get("val_tokens_evaluated"), numbers.get("validation_source")
    if evaluated:
        # The split can be far longer than what is scored: say both, and which settings decide the score's size.
        lines.append(
            f"validation: {evaluated:,} tokens each evaluation (train.eval_batches batches of data.batch_size x "
            f"data.max_length, fewer if the held-out split is shorter) from the held-out split"
            + (f", {source}" if source else "")
        )
    elif source:
        lines.append(f"validation: {source}")
    if numbers["overfitting_from_step"] is not None:
        lines.append(
            f"**overfitting from step {numbers['overfitting_from_step']}**: validation loss rose "
            f"{numbers['val_loss_final'] - numbers['val_loss_best']:.3f} nats above its best while the training "
            f"loss kept falling (rule: {_margin_rule(numbers)}, and training loss lower at the end than at the "
            "best step); the best checkpoint is kept: `--step best`"
        )
    elif numbers["val_loss_final"] is not None and numbers["val_loss_final"] > numbers["val_loss_best"]:
        above = numbers["overfit_evals_above"]
        lines.append(
            f"no overfitting verdict: the last evaluation is "
            f"{numbers['val_loss_final'] - numbers['val_loss_best']:.3f} nats above the best, but the rule needs "
            f"{_margin_rule(numbers)}; {above} of the last {numbers['overfit_min_evals']} "
            f"{'is' if above == 1 else 'are'}"
            + ("" if above < numbers["overfit_min_evals"] else " (training loss did not fall meanwhile)")
        )
    dropped = numbers.get("probes_dropped") or []
    if dropped:
        listed = ", ".join(f"{p['token']} ({_times(p['count'])})" for p in dropped)
        lines.append(
            f"probes not shown: {listed}: seen fewer than {numbers.get('probe_min_count', 20)} times in this "
            "training text, too rarely for their rows to have learned neighbours; this corpus's frequent words "
            "are shown instead"
        )
    if numbers["val_loss_positions_shuffled"] is not None and numbers["val_loss_final"] is not None:
        lines.append(
            f"validation loss with the positional rows shuffled: {numbers['val_loss_positions_shuffled']:.3f} "
            f"({numbers['positions_shuffled_gap']:+.3f} nats: how much the model relies on where a token sits)"
        )
    position = numbers.get("position", "learned")
    if position != "learned":
        lines.append(f"positions: {POSITION_WORDS[position]}")
    if numbers["position_locality"] is None:
        lines.append(
            "position locality: not defined (no positional table: position acts inside attention, or not at all)"
        )
    elif position == "sinusoidal":
        lines.append(
            f"position locality (adjacent minus >= {length / 2:g} apart, mean cosine): "
            f"{numbers['position_locality']:+.3f}, fixed (the sinusoidal table is not trained)"
        )
    else:
        lines.append(
            f"position locality (adjacent minus >= {length / 2:g} apart, mean cosine): "
            f"{numbers['position_locality_initial']:+.3f} untrained -> {numbers['position_locality']:+.3f} trained"
        )
    by_length = numbers.get("val_loss_by_length") or {}
    longer = {int(k): v for k, v in by_length.items() if int(k) > length and v is not None}
    if longer:
        listed = ", ".join(f"{v:.3f} at {k}" for k, v in sorted(longer.items()))
        lines.append(f"validation loss past the trained length {length}: {listed} (table below)")
    if numbers["median_tokens_per_sec"] is not None:
        lines.append(f"median throughput: {numbers['median_tokens_per_sec']:,.0f} tokens/s")
    lines.append(f"uniform-guess loss ln({numbers['num_classes']:,}) = {numbers['uniform_guess_loss']:.3f}")
    return lines


def captions(numbers: dict, num_layers: int | None, length: int, pca_count: int) -> dict[str, str]:
    """A caption per picture heading (``LOSS``, ``NEIGHBORS``, ...): what it shows and how to read it.

    ``num_layers == 0`` (embeddings only) explains why the positional table is uniform.
    """
    k = numbers["num_classes"]
    evaluated = numbers.get("val_tokens_evaluated")
    same = f" (the same {evaluated:,} tokens at each evaluation)" if evaluated else ""
    loss = (
        f"Cross-entropy of the next-token prediction (lower is better) against training step: blue is the "
        f"training loss, orange the loss on held-out validation text{same}. The dashed line, ln({k:,}) = "
        f"{numbers['uniform_guess_loss']:.2f}, is a uniform guess over the {k:,} tokens the model can predict: an "
        "untrained model starts there, and anything below it has been learned. The star marks the lowest "
        "validation loss"
    )
    if numbers["val_loss_best"] is not None:
        loss += f" ({numbers['val_loss_best']:.3f} at step {numbers['val_loss_best_step']})"
    if numbers["overfitting_from_step"] is not None:
        loss += (
            f". The shaded steps after it are overfitting: validation loss rises while training loss falls, so "
            f"the model memorises the training text from step {numbers['overfitting_from_step']} on."
        )
    elif numbers["val_loss_final"] is not None and numbers["val_loss_final"] > numbers["val_loss_best"]:
        # A rise within the rule's margin is no verdict either way: "no sign" would contradict the curve.
        loss += (
            f". The last evaluation is {numbers['val_loss_final'] - numbers['val_loss_best']:.3f} nats above it: "
            "not yet overfitting by the report's rule, which needs the last few evaluations all above the best "
            "by more than the evaluation noise (see the summary); a longer run would tell whether it keeps rising."
        )
    elif numbers["val_loss_best"] is not None:
        loss += "; it is the last evaluation, so validation loss was still falling when the run ended."
    neighbours = (
        "For each probe token, its closest tokens by cosine similarity after subtracting the candidates' mean "
        "vector, before training (random vectors: the neighbours are arbitrary) and after. The subtitle gives the "
        "baseline: the cosine of a random pair of candidates; after training each cosine is followed by how many "
        "standard deviations (σ) of that random-pair cosine it lies above the random-pair mean. A neighbour well "
        "above it shares contexts with the probe in the training text (e.g. pronouns next to pronouns). The "
        f"probes are the configured ones seen at least {numbers.get('probe_min_count', 20)} times in the training "
        "text, then its most frequent content words. The picture shows at most the first "
        f"{MAX_NEIGHBOR_ROWS} probes; report.md and report.json list them all."
    )
    pca_caption = (
        f"The {pca_count} most frequent training tokens projected onto their first two principal components "
        "(the two directions along which these vectors vary most; the axis labels give the share of variance), "
        "before and after training. Before, the cloud is round noise; after, tokens used alike (function words, "
        "punctuation, names) drift together. Labels go to the most frequent tokens that fit without overlapping; "
        "⟨e2 80⟩ marks a token holding only part of a UTF-8 character (GPT-2 splits some characters, such as ’, "
        "across tokens)."
    )
    path = (
        f"The {length} positional vectors projected onto their first two principal components and joined in "
        "position order (0 is dark, the last position yellow; each point is labelled with its position). "
        "Untrained vectors are independent random draws, so the path jumps about; a trained table that has "
        "learned an order traces a smooth path, with each position next to its neighbours. PCA removes the "
        "table's mean vector first; the titles give its length and how far the positions lie from it."
    )
    if num_layers == 0:
        path += (
            " Without attention every position learns the same vector: the trained positions lie close to their "
            "common mean compared with its length, and what PCA shows of the small remainder is noise."
        )
    words = {LOSS: loss, NEIGHBORS: neighbours, PCA: pca_caption}
    if numbers["position_locality"] is not None:  # schemes with a table: the position pictures
        words.update({POSITIONS: _position_caption(numbers, num_layers, length), POSITION_PATH: path})
    return words


# --- the GPT-2 reference page (jaxembed.report.reference) ------------------------------------


def signed(x: float, digits: int = 2) -> str:
    """``x`` with its sign and ``digits`` decimals, never ``-0.00`` (a mean of about zero reads as ``+0.00``).

    Example:
      >>> signed(-0.0001), signed(0.5712, 3)
      ('+0.00', '+0.571')
    """
    return f"{round(x, digits) + 0.0:+.{digits}f}"


REFERENCE_POSITIONS = "Position tables: this run next to GPT-2"
REFERENCE_PATH = "The path through positions: GPT-2's helix and this run's path"
REFERENCE_NEIGHBORS = "Nearest neighbours: this run next to GPT-2"
#: The bullet the run's report.md gains once reference.md exists (``reference.write_reference``).
REFERENCE_LINK = (
    "compared with GPT-2: [reference.md](reference.md), GPT-2's own trained token and position tables next to "
    "this run's (`jaxembed reference`)"
)


def no_position_table(position: str) -> str:
    """Why the reference page shows GPT-2's position pictures alone for ``position`` (rope, alibi, none).

    Example:
      >>> no_position_table("rope").split(":")[0]
      'This run has no position table to compare (model.position = rope'
    """
    return (
        f"This run has no position table to compare (model.position = {position}: "
        f"{POSITION_WORDS[position].split(': ', 1)[-1]}): position acts inside attention, or not at all, so only "
        "GPT-2's learned table is drawn."
    )


def reference_captions(numbers: dict) -> dict[str, str]:
    """A caption per picture of the GPT-2 reference page, from ``reference.json``'s numbers.

    Written for a learner comparing two tables: what each picture shows, what to compare, and
    what GPT-2's own shapes mean (the smooth band, the helix, shared neighbours).

    Example:
      >>> numbers = {"run": {"position": "learned", "context_length": 16, "position_locality": 0.57,
      ...     "step": 300, "features": 32, "random_pair_cosine_centred": {"mean": 0.0, "std": 0.1}},
      ...     "gpt2": {"positions": 1024, "features": 768, "position_locality": 0.3, "position_locality_all": 0.8,
      ...     "random_pair_cosine_centred": {"mean": 0.0, "std": 0.08}, "position_pca_explained": [0.3, 0.2, 0.1]},
      ...     "neighbor_candidates": 900, "neighbor_min_count": 3, "shared_neighbors": 4, "listed_neighbors": 30}
      >>> sorted(reference_captions(numbers)) == sorted([REFERENCE_POSITIONS, REFERENCE_PATH, REFERENCE_NEIGHBORS])
      True
    """
    run, gpt2 = numbers["run"], numbers["gpt2"]
    length, total = run["context_length"], gpt2["positions"]
    shown = min(length, total)
    has_table = run["position_locality"] is not None
    kind = "computed by a formula, never trained" if run["position"] == "sinusoidal" else f"at step {run['step']}"
    compare = (
        f"The left map is this run's table ({shown} positions, {kind}; locality {run['position_locality']:+.2f}); "
        f"the middle one is GPT-2's first {shown} positions, the same window (locality "
        f"{gpt2['position_locality']:+.2f}): compare these two."
        if has_table
        else f"{no_position_table(run['position'])} The first map is GPT-2's first {shown} positions (locality "
        f"{gpt2['position_locality']:+.2f}), the window this run trained on."
    )
    positions = (
        "Each cell (i, j) is the cosine similarity between the vectors of positions i and j, on one colour scale "
        "for every map (red: alike, blue: opposite, white: unrelated; the diagonal is 1 by definition). "
        f"{compare} The last map is all {total:,} of GPT-2's positions (locality {gpt2['position_locality_all']:+.2f}"
        f", counting positions at least {total // 2} apart as distant). GPT-2's map is a smooth band along the "
        "diagonal that fades with distance: neighbouring positions got nearly the same vector and far ones "
        "unrelated vectors. Nothing in GPT-2 told it that 3 comes next to 4; each position's vector started as "
        "noise and was trained on a great many 1,024-token windows of web text, and being similar to its "
        "neighbours is what made the attention layers' job easy. Locality is the mean cosine of adjacent positions "
        "minus that of positions at least half the window apart: near 0 for noise, larger for a sharper order."
    )
    explained = gpt2["position_pca_explained"]
    path = (
        f"Each table's positions projected onto its own principal components (the directions along which its "
        f"vectors vary most) and joined in position order, coloured from position 0 (dark) to the last (yellow). "
        f"GPT-2's {total:,} positions trace one continuous curve that winds as it goes: on the first three "
        f"components ({explained[0]:.0%}, {explained[1]:.0%} and {explained[2]:.0%} of the variance) a helix, "
        "which the first two components alone show from one end, as an arc or loops. Why a helix: the principal components of vectors that change smoothly "
        "along a sequence are roughly slow waves over position (the first half a period across the whole range, "
        "the next a full period, and so on), like the sine and cosine columns of the sinusoidal table; a point "
        "driven by two or three such waves at once spirals. So the helix says that GPT-2 lays its positions "
        "out along one smooth path, each next to its neighbours: what the sinusoidal table builds in by formula, "
        "GPT-2 learned."
    )
    path += (
        f" The last panel is this run's {length} positions on its own first two components: a smooth path in "
        "order means this run learned an order too; a zigzag means its table is still mostly its random start."
        if has_table
        else f" {no_position_table(run['position'])}"
    )
    ours, theirs = run["random_pair_cosine_centred"], gpt2["random_pair_cosine_centred"]
    neighbours = (
        f"For each probe (the ones the run's report shows), its nearest tokens in each table by the same rule: "
        f"cosine after subtracting that table's own mean over the same candidates, the "
        f"{numbers['neighbor_candidates']:,} tokens seen at least {numbers['neighbor_min_count']} times in this "
        "run's training text, so both columns rank among the same tokens. Raw cosines are not comparable across "
        f"tables ({gpt2['features']:,} dimensions against this run's {run['features']:,}), so each cosine is "
        "followed by how many standard "
        f"deviations σ of its own table's random-pair cosine it lies above that table's mean (this run: "
        f"{signed(ours['mean'])} ± {ours['std']:.2f}; GPT-2: {signed(theirs['mean'])} ± {theirs['std']:.2f}). GPT-2 "
        "learned its table from some 40 GB of web text. A neighbour in both columns is a similarity this run "
        "found from its text alone that GPT-2 found too: usually grammar (a pronoun next to pronouns, a verb form "
        "next to verb forms), which any English teaches. Neighbours only in this run's column tell what this "
        "corpus is about (characters who share scenes); only in GPT-2's, what a short run on little text has not "
        f"learned. {numbers['shared_neighbors']} of the {numbers['listed_neighbors']} neighbours listed for this "
        "run are among GPT-2's for the same probe."
    )
    return {REFERENCE_POSITIONS: positions, REFERENCE_PATH: path, REFERENCE_NEIGHBORS: neighbours}
