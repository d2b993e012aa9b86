"""SPEC parsing (``MODE[,key=value,...]``): overrides, aliases, and a one-line error for every bad SPEC."""

from __future__ import annotations

import pytest

from aggscope.analysis.specs import SPEC_KEYS, check_specs, describe_layout, parse_spec, parse_specs
from aggscope.core.layout import Layout
from aggscope.errors import AggscopeError

BASE = Layout(mini_batch_size=64, micro_batch_size=4, dp_size=2, max_seq_len=1024)


def test_mode_alone_takes_the_command_line_layout() -> None:
    spec = parse_spec("token_mean", BASE)
    assert spec.mode.name == "token_mean"
    assert spec.layout == BASE
    assert spec.label == "token_mean"


def test_aliases_and_overrides() -> None:
    spec = parse_spec("seq-mean-token-mean, micro_batch_size = 8 ,DP-SIZE=4", BASE)
    assert spec.mode.name == "sequence_mean"
    assert spec.layout == BASE.replace(micro_batch_size=8, dp_size=4)
    # The label is the canonical form: canonical mode, dashed keys, in the order given.
    assert spec.label == "sequence_mean,micro-batch-size=8,dp-size=4"


def test_every_layout_option_is_a_key() -> None:
    assert set(SPEC_KEYS) == {
        "mini-batch-size",
        "mini-batch-prompts",
        "micro-batch-size",
        "dp-size",
        "max-seq-len",
        "order",
        "seed",
        "composition",
        "micro-batch-tokens",
        "prompt-tokens",
        "passes",
        "rank-shuffle-seed",  # verl's actor.shuffle: from a verl config, or a SPEC (rank-shuffle-seed=none drops it)
    }
    spec = parse_spec("prompt_mean,order=shuffle,seed=7,max-seq-len=512", BASE)
    assert (spec.layout.order, spec.layout.seed, spec.layout.max_seq_len) == ("shuffle", 7, 512)
    spec = parse_spec("token_mean,mini-batch-size=8,dp-size=2,composition=ranks_first", BASE)
    assert spec.layout.composition == "ranks_first"


def test_a_spec_mini_batch_replaces_the_command_lines_either_way() -> None:
    by_prompts = parse_spec("prompt_mean,mini-batch-prompts=16", BASE)
    assert (by_prompts.layout.mini_batch_size, by_prompts.layout.mini_batch_prompts) == (None, 16)
    back = parse_spec("token_mean,mini-batch-size=32", Layout(mini_batch_prompts=4))
    assert (back.layout.mini_batch_size, back.layout.mini_batch_prompts) == (32, None)


def test_none_unsets_an_optional_key() -> None:
    spec = parse_spec("token_mean,micro-batch-size=none,mini-batch-size=None", BASE)
    assert spec.layout.micro_batch_size is None and spec.layout.mini_batch_size is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token_mena", "unknown mode 'token_mena'"),
        ("", "starts with no mode"),
        (",dp-size=2", "starts with no mode"),
        ("token_mean,mini-batch=4", "unknown key 'mini-batch'"),
        ("token_mean,micro-batch-size", "'micro-batch-size' is not key=value"),
        ("token_mean,dp-size=", "'dp-size=' is not key=value"),
        ("token_mean,dp-size=two", "dp-size must be a whole number, got 'two'"),
        ("token_mean,dp-size=0", "--dp-size must be a whole number of at least 1"),
        ("token_mean,order=sorted", "unknown order 'sorted'"),
        ("token_mean,dp-size=2,dp_size=4", "key 'dp-size' is given twice"),
        ("token_mean,mini-batch-size=8,mini-batch-prompts=2", "mini-batch-size or mini-batch-prompts, not both"),
        ("token_mean,seed=3", "seed applies only to order=shuffle"),
    ],
)
def test_bad_specs_name_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(AggscopeError) as caught:
        parse_spec(text, BASE)
    message = caught.value.message
    assert expected in message
    assert message.startswith(f"SPEC {text!r}")
    assert "\n" not in message


def test_unknown_mode_lists_the_valid_modes() -> None:
    with pytest.raises(AggscopeError, match="valid modes: token_mean, token_mean_legacy"):
        parse_spec("nope", BASE)


def test_parse_specs_needs_a_candidate_and_rejects_repeats() -> None:
    specs = parse_specs("token_mean", ["prompt_mean", "token_mean,dp-size=4"], BASE)
    assert [s.label for s in specs] == ["token_mean", "prompt_mean", "token_mean,dp-size=4"]
    with pytest.raises(AggscopeError, match="at least one --to"):
        parse_specs("token_mean", [], BASE)
    # dapo is token_mean, and dp-size=2 is already the base's: the same configuration.
    with pytest.raises(AggscopeError, match="the same mode and layout as 'token_mean'"):
        parse_specs("token_mean", ["dapo,dp-size=2"], BASE)


def test_check_specs_names_the_spec_that_cannot_run() -> None:
    specs = parse_specs("token_mean", ["prompt_mean"], BASE)
    with pytest.raises(AggscopeError, match=r"SPEC 'prompt_mean': .*unavailable without a uid column"):
        check_specs(specs, has_groups=False, source="data.parquet")
    horizonless = parse_specs("token_mean", ["dr_grpo,max-seq-len=none"], BASE)
    with pytest.raises(AggscopeError, match=r"SPEC 'seq_mean_token_sum_norm,max-seq-len=none': .*--max-seq-len"):
        check_specs(horizonless, has_groups=True, source="data.parquet")
    grouped = parse_specs("token_mean", ["token_mean,order=grouped"], BASE)
    with pytest.raises(AggscopeError, match="--order grouped needs a uid column"):
        check_specs(grouped, has_groups=False, source="data.parquet")
    check_specs(specs, has_groups=True, source="data.parquet")


def test_describe_layout() -> None:
    assert describe_layout(BASE) == "mini-batches of 64 sequences · 2 ranks · micro-batches of 4 · H = 1024 · logged order"
    assert describe_layout(Layout(mini_batch_prompts=8, order="shuffle", seed=3)) == (
        "mini-batches of 8 prompts · 1 rank · no micro-batching · shuffle order (seed 3)"
    )


def test_a_command_line_seed_serves_the_specs_that_shuffle() -> None:
    seeded = BASE.replace(seed=7)
    base, shuffled = parse_specs("token_mean", ["token_mean,order=shuffle"], seeded)
    assert (shuffled.layout.order, shuffled.layout.seed) == ("shuffle", 7)
    assert base.layout.seed == 0  # a seed means nothing to the logged order
    with pytest.raises(AggscopeError, match="--seed applies only to shuffled layouts"):
        parse_specs("token_mean", ["sequence_mean"], seeded)
