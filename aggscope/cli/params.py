"""The shared options' declarations: every flag ``aggscope.cli.options`` injects into the commands,
with its help and its panel, each defined once (``options`` builds what the commands get from them).
"""

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

LAYOUT_PANEL = "Layout (how the trainer splits a step)"
INPUT_PANEL = "Input"
CONFIG_PANEL = "Trainer config (the layout and mode your run used)"
ENGINE_PANEL = "Engine (where the per-step work runs)"


def param(name: str, annotation: Any, default: Any, kind: Any = inspect.Parameter.KEYWORD_ONLY) -> inspect.Parameter:
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


INPUT_PARAMS = [
    param(
        "path",
        Annotated[
            # A string, not a Path: Path would fold the '//' of an object-storage URI (s3://...).
            Optional[str],
            typer.Argument(
                metavar="PATH",
                help="Rollout batches: a file, directory or glob (canonical Parquet or a trainer's dump, see --format), "
                "local or a URI such as s3://bucket/run/. "
                "Default: the bundled sample.",
                show_default=False,
            ),
        ],
        None,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ),
    param(
        "col",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--col",
                metavar="ROLE=NAME",
                help="Set a column's role, ROLE=NAME (repeatable), e.g. --col uid=prompt_id. "
                "Roles: uid, uid_text, advantages, loss_mask, reward, response_length, step, sequence.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "format",
        Annotated[
            Optional[str],
            typer.Option(
                "--format",
                metavar="FORMAT",
                help="Input format: parquet, trl, verl, nemo-rl, prime-rl, atropos, slime, skyrl. Default: detected.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "reward_col",
        Annotated[
            Optional[str],
            typer.Option(
                "--reward-col",
                metavar="NAME",
                help="Field or column holding the reward, where a dump has several (e.g. a TRL reward function, verl's acc).",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "advantage",
        Annotated[
            Optional[str],
            typer.Option(
                "--advantage",
                metavar="ESTIMATOR",
                help="Rebuild advantages from rewards per prompt group: grpo, dr_grpo or rloo. Default: the dump's own "
                "advantages, grpo where it has none.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "tokenizer",
        Annotated[
            Optional[Path],
            typer.Option(
                "--tokenizer",
                metavar="DIR",
                help="Local tokenizer folder to count the tokens of text-only dumps (verl, trl); needs transformers "
                "(pip install 'aggscope[tokenizer]'). Default: estimate from the text.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "trust_pickle",
        Annotated[
            bool,
            typer.Option(
                "--trust-pickle",
                help="Unpickle a .pkl or .pt dump fully, for a file you trust that the safe loader refuses (it can run "
                "code the file names). Only for a file named as PATH, never a folder or glob.",
                rich_help_panel=INPUT_PANEL,
            ),
        ],
        False,
    ),
    param(
        "eos_trained",
        Annotated[
            Optional[bool],
            typer.Option(
                "--eos-trained/--no-eos-trained",
                help="Count each completion's end-of-sequence token, which the trainer trains but the logged text "
                "leaves out (trl). Default: on for trl.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "tool_mask",
        Annotated[
            Optional[bool],
            typer.Option(
                "--tool-mask/--no-tool-mask",
                help="Count the tool responses a multi-turn output shows as ChatML tool turns as not trained, as verl's "
                "response_mask has them (verl). Default: on for verl.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "use_dump_weights",
        Annotated[
            bool,
            typer.Option(
                "--use-dump-weights",
                help="Take the dump's own per-token loss weights into the weights, as the trainer that reads them does "
                "(prime-rl's rl_weights: each token's loss times its weight, weight-0 tokens out of the mask and every "
                "denominator). weights, check and inspect only.",
                rich_help_panel=INPUT_PANEL,
            ),
        ],
        False,
    ),
    param(
        "max_completion_length",
        Annotated[
            Optional[int],
            typer.Option(
                "--max-completion-length",
                min=1,
                metavar="N",
                help="The trainer's max_completion_length (trl): a completion that long was cut there and has no "
                "end-of-sequence token to count.",
                rich_help_panel=INPUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

LAYOUT_PARAMS = [
    param(
        "mini_batch_size",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Sequences per optimizer step (default: the whole step).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "mini_batch_prompts",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Prompts per optimizer step, counted as SkyRL counts them (runs of equal consecutive uids). "
                "verl's ppo_mini_batch_size is in prompts but slices prompts x n rows: give that as --mini-batch-size.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "micro_batch_size",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Sequences per micro-batch per rank (default: the whole rank shard).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "dp_size",
        Annotated[
            Optional[int],
            typer.Option(metavar="N", help="Data-parallel ranks (default 1).", rich_help_panel=LAYOUT_PANEL, show_default=False),
        ],
        None,
    ),
    param(
        "max_seq_len",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="H",
                help="Horizon H of seq_mean_token_sum_norm (Dr. GRPO); enables that mode.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "order",
        Annotated[
            Optional[str],
            typer.Option(
                metavar="ORDER",
                help="Row order the trainer sees: logged (default), grouped, shuffle or balanced (verl's balance_batch "
                "over --dp-size ranks).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "seed",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N", help="Seed of --order shuffle (default 0).", rich_help_panel=LAYOUT_PANEL, show_default=False
            ),
        ],
        None,
    ),
    param(
        "composition",
        Annotated[
            Optional[str],
            typer.Option(
                metavar="COMPOSITION",
                help="canonical (default: mini-batches, then rank shards inside each) or ranks_first (verl: rank shards "
                "of the whole step, then mini-batches inside each).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "micro_batch_tokens",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Token budget of a micro-batch per rank, instead of --micro-batch-size: verl's use_dynamic_bsz "
                "(ppo_max_token_len_per_gpu x sequence-parallel size), partitioned as verl does.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "prompt_tokens",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Prompt tokens to add to every row's length where the split counts lengths (--micro-batch-tokens, "
                "--order balanced); the input holds responses only (default 0).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "passes",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="N",
                help="Times every mini-batch is trained with the same split (verl ppo_epochs, TRL num_iterations); "
                "weights are summed over the passes (default 1).",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "rank_shuffle_seed",
        Annotated[
            Optional[int],
            typer.Option(
                metavar="S",
                help="verl's actor.shuffle with data_loader_seed S (needs --composition ranks_first): each rank walks "
                "its shard in the order of torch's DataLoader shuffle seeded S + rank, a new draw every pass.",
                rich_help_panel=LAYOUT_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

CONFIG_PARAMS = [
    param(
        "config",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--config",
                metavar="FILE",
                help="The trainer's config (repeatable, later files win): verl/SkyRL/NeMo-RL YAML (a run's .hydra/config.yaml), "
                "TRL GRPOConfig JSON or YAML, prime-rl TOML, or a saved command line (.sh, .txt: OpenRLHF). Sets the layout "
                "and the mode; layout flags still win.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "trainer",
        Annotated[
            Optional[str],
            typer.Option(
                "--trainer",
                metavar="TRAINER",
                help="verl, skyrl, trl, openrlhf, nemo-rl or prime-rl. Default: inferred from the config's keys or the dump.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "set_values",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--set",
                metavar="KEY=VALUE",
                help="Override a config key in the trainer's spelling, KEY=VALUE (repeatable), e.g. "
                "--set actor_rollout_ref.actor.ppo_mini_batch_size=64.",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

COMPARE_CONFIG_PARAMS = [
    param(
        "from_config",
        Annotated[
            Optional[str],
            typer.Option(
                "--from-config",
                metavar="FILE",
                help="compare: the trainer config you have, as the base (with --trainer and --set like --config).",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
    param(
        "to_config",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--to-config",
                metavar="FILE[,KEY=VALUE...]",
                help="compare: a config to compare against it (repeatable): FILE, FILE,KEY=VALUE,... or ,KEY=VALUE,... "
                "(the --from-config with these changes).",
                rich_help_panel=CONFIG_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]

ENGINE_PARAMS = [
    param(
        "engine",
        Annotated[
            str,
            typer.Option(
                metavar="ENGINE",
                help="local (this process, one step at a time) or ray (one Ray task per step, reading the files on the "
                "workers; needs pip install 'aggscope[ray]').",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        "local",
    ),
    param(
        "address",
        Annotated[
            Optional[str],
            typer.Option(
                metavar="ADDRESS",
                help="Ray cluster to use with --engine ray: auto, HOST:PORT or ray://HOST:PORT. Default: a running Ray "
                "(RAY_ADDRESS) or a new local one.",
                rich_help_panel=ENGINE_PANEL,
                show_default=False,
            ),
        ],
        None,
    ),
]
