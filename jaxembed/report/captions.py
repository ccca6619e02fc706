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
    "rope": "rotary: queries and keys turned by an angle proportional to their position (Su et al. 2021)",
    "alibi": "ALiBi: a penalty on attention logits linear in the query-key distance (Press et al. 2022)",
    "none": "none: causal attention alone (Haviv et al. 2022)",
}


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
      no overfitting verdict: the last evaluation is 0.030 nats above the best, but the rule needs the last 3 evaluations all more than 0.020 nats (too few evaluations to estimate their noise) above the best, and 1 is
    """
    lines = [f"steps: {numbers['steps']}"]
    if numbers["val_loss_initial"] is not None:
        lines.append(
            f"validation loss: {numbers['val_loss_initial']:.3f} (step 0) -> {numbers['val_loss_final']:.3f} "
            f"(step {numbers['steps']}); best {numbers['val_loss_best']:.3f} at step {numbers['val_loss_best_step']}"
        )
    if numbers.get("validation_source"):
        lines.append(f"validation: {numbers['validation_source']}")
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
            f"{_margin_rule(numbers)}, and {above} {'is' if above == 1 else 'are'}"
            + ("" if above < numbers["overfit_min_evals"] else " (training loss did not fall meanwhile)")
        )
    dropped = numbers.get("probes_dropped") or []
    if dropped:
        listed = ", ".join(f"{p['token']} ({p['count']}x)" for p in dropped)
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
    lines.append(f"uniform-guess loss ln({numbers['num_classes']}) = {numbers['uniform_guess_loss']:.3f}")
    return lines


def captions(numbers: dict, num_layers: int | None, length: int, pca_count: int) -> dict[str, str]:
    """A caption per picture heading (``LOSS``, ``NEIGHBORS``, ...): what it shows and how to read it.

    ``num_layers == 0`` (embeddings only) explains why the positional table is uniform.
    """
    k = numbers["num_classes"]
    loss = (
        f"Cross-entropy of the next-token prediction (lower is better) against training step: blue is the "
        f"training loss, orange the loss on held-out validation text. The dashed line, ln({k:,}) = "
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
    else:
        loss += (
            "; the validation loss did not stay above it by more than the overfitting rule's margin (the "
            "evaluation noise, see the summary) for the last evaluations, so there is no sign of overfitting."
        )
    neighbours = (
        "For each probe token, its closest tokens by cosine similarity after subtracting the candidates' mean "
        "vector, before training (random vectors: the neighbours are arbitrary) and after. The subtitle gives the "
        "baseline: the cosine of a random pair of candidates; after training each cosine is followed by how many "
        "standard deviations (σ) of that random-pair cosine it lies above the random-pair mean. A neighbour well "
        "above it shares contexts with the probe in the training text (e.g. pronouns next to pronouns). The "
        "probes are the configured ones this text uses at least as often as a candidate, then its most frequent "
        "content words. The picture shows at most the first "
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
