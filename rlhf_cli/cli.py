"""The `rlhf` command line: parse, load the recipe, call one stage. No training logic lives here.

rlhf pipeline                      # the whole tiny pipeline on the toy world
rlhf pretrain --recipe tiny --set pretrain.training.max_steps=50
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from rlhf_cli import __version__
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.steps import BY_NAME, MODEL_STAGES, TABLE

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # no network call the user did not ask for
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not sys.stdout.isatty():  # piped or logged, rich would squeeze every table to 80 columns
    os.environ.setdefault("COLUMNS", "140")
if not sys.stderr.isatty():  # progress bars only on a terminal: in a log file every redraw is a line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# `rlhf --help` lists the commands in the order of the recipe, then the tools (typer would put the sub-apps last).
_STEPS = [step.command for step in TABLE]
_AFTER_LABEL = _STEPS.index("label") + 1  # people write demonstrations beside ranking
COMMAND_ORDER = (
    "pipeline", *_STEPS[:_AFTER_LABEL], "write", *_STEPS[_AFTER_LABEL:],
    "chat", "sweep", "compare", "check", "export", "recipe", "data", "env",
)  # fmt: skip


class _InPipelineOrder(typer.core.TyperGroup):
    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


_option_type = typer.core.TyperOption.display_type_rich


def _no_type_on_flags(self, ctx):
    """typer 0.29 shows `<bool>` after every plain flag (--resume <bool>), as if it took a value: show nothing."""
    return None if self.is_flag and self.metavar is None else _option_type(self, ctx)


typer.core.TyperOption.display_type_rich = _no_type_on_flags

app = typer.Typer(
    name="rlhf",
    cls=_InPipelineOrder,
    help="The whole ChatGPT training recipe from one YAML recipe: pretrain -> sft -> sample/label -> reward -> ppo.\n\n"
    "Start with `rlhf pipeline` (the tiny recipe on the toy world, minutes on a laptop CPU).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
recipe_app = typer.Typer(help="Built-in recipes and resolved recipes.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets: the toy world.", no_args_is_help=True)
reward_app = typer.Typer(
    help=f"{BY_NAME['reward'].summary.removesuffix('.')}, or inspect one.\n\nExample: {BY_NAME['reward'].example}"
)
app.add_typer(recipe_app, name="recipe")
app.add_typer(data_app, name="data")
label_app = typer.Typer()  # its help is the docstring of `label` (the callback)
app.add_typer(reward_app, name="reward")
app.add_typer(label_app, name="label")

STATE = {"debug": False}

RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", help="A built-in recipe name (see `rlhf recipe list`) or a YAML path.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: key.path=value (YAML value; repeatable)."),
]
OutOpt = Annotated[
    Path | None, typer.Option("--output-dir", "-o", help="Run folder (default: runs/NAME, NAME from the recipe).")
]
# The web page of `rlhf label --annotator web` and `rlhf write` (rlhf_cli.people.web_label)
HostOpt = Annotated[
    str,
    typer.Option(
        "--host", help="web: the address to serve on; any but 127.0.0.1/localhost needs the printed link's token."
    ),
]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="web: the port to serve on.")]
WEB_HOST, WEB_PORT = "127.0.0.1", 8765  # the defaults of --host and --port
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="human: stop after this many prompts in this sitting.")
]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder (runs/tiny).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint / keep finished work.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace this stage's existing folder.")]
OverwriteSamplesOpt = Annotated[bool, typer.Option("--overwrite", help="Replace feedback/samples.jsonl.")]
OverwriteRankingsOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Rank again from the start; rankings a person made are moved to feedback/backup/, not deleted.",
    ),
]
PeopleOpt = Annotated[
    bool,
    typer.Option(
        "--people",
        help="A people's round: fresh answers in feedback/people/ for people to rank beside the annotator's rankings "
        "(which stay as they are); `rlhf reward` trains on both.",
    ),
]
OverwritePointsOpt = Annotated[bool, typer.Option("--overwrite", help="Train the sweep's finished points again.")]
OverwriteRunOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the chosen stages' outputs (a person's rankings are backed up).")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and the plan; train nothing.")]
AcceptOpt = Annotated[
    bool,
    typer.Option(
        "--accept-recipe-change",
        help="With --resume: continue although the recipe's training settings now differ from the interrupted "
        "run's (e.g. a larger max_steps to train longer). Without it such a resume is refused.",
    ),
]


def _command_for_run(command: str, recipe: str, set_: list[str] | None, output_dir: Path | None) -> list[str]:
    """`rlhf COMMAND` on the run this command works on, for a printed hint that must work as printed: the recipe and
    --set overrides as given, and the run folder when it is not the recipe's own (`--output-dir`)."""
    words = ["rlhf", *command.split(), "--recipe", recipe, *(f"--set={s}" for s in set_ or [])]
    return words + ["--output-dir", str(output_dir)] * bool(output_dir)


def _version(value: bool):
    if value:
        typer.echo(f"rlhf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for user errors too.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
):
    STATE["debug"] = debug


def handled(fn):
    """User errors -> one message and exit 2; Ctrl-C after a checkpoint -> exit 130; anything else -> exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rlhf_cli.runtime.runs import Interrupted

        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if STATE["debug"]:
                raise
            typer.secho(f"Error: {err}", fg="red", err=True)
            raise typer.Exit(getattr(err, "exit_code", 2)) from None
        except (Interrupted, KeyboardInterrupt) as err:
            typer.secho(f"Interrupted. {err}".strip(), fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _load(recipe: str, overrides: list[str] | None):
    from rlhf_cli.recipe import load_recipe

    return load_recipe(recipe, overrides)


def _recipe_and_run(recipe: str, overrides: list[str] | None, output_dir: Path | None):
    """The recipe (`--recipe`, `--set`) and the run folder it names, or `--output-dir`."""
    rec = _load(recipe, overrides)
    return rec, rec.run_dir(output_dir)


def _served(host: str, port: int) -> list[str]:
    """The --host and --port flags that differ from the defaults: to repeat them in a printed command."""
    return [f"--host={host}"] * (host != WEB_HOST) + [f"--port={port}"] * (port != WEB_PORT)


def _writing(run_dir: Path | str | None):
    """Hold the run folder's lock while this command writes into it (rlhf_cli.runtime.lock): a second writer is refused, naming
    this command and its process. None: the command writes into no run."""
    if run_dir is None:
        return contextlib.nullcontext()
    from rlhf_cli.runtime.lock import command_line, run_lock

    return run_lock(run_dir, command_line())


@contextlib.contextmanager
def _writing_run(run_dir: Path):
    """Hold the run's lock, and on an input error remove what the command made before its checks failed
    (runs.no_trace_on_user_error): the frame of every command that writes stage or feedback files into a run."""
    from rlhf_cli.runtime.runs import no_trace_on_user_error

    with _writing(run_dir), no_trace_on_user_error(run_dir):
        yield


def _existing_folder(path: Path) -> Path | None:
    """A run folder named on the command line, to lock when it exists (the command itself refuses a missing one)."""
    return path if path.exists() else None


def _run_of(path: Path | str | None) -> Path | None:
    """The run folder `path` lies in (None outside any run): the one a command writing to `path` must lock."""
    if path is None:
        return None
    from rlhf_cli.runtime.layout import enclosing_run

    return enclosing_run(path)


def _dry_run(rec, run_dir: Path, plan: str, stages: list[str]):
    """The resolved recipe, then the plan: the steps that would run and the trainer config each training step builds."""
    typer.echo(rec.to_yaml())
    typer.echo(f"# plan: {plan}\n# steps: {', '.join(stages)}\n# run folder: {run_dir}")
    from rlhf_cli.stages.common import build_trainer_configs

    for stage, cfg in build_trainer_configs(rec, run_dir, stages).items():
        typer.echo(f"# {stage}: {type(cfg).__name__} builds (max_steps={cfg.max_steps}, lr={cfg.learning_rate})")


def _stage_command(stage: str, rec_name: str, overrides, output_dir, resume, overwrite, dry_run, accept=False):
    import importlib

    rec, run_dir = _recipe_and_run(rec_name, overrides, output_dir)
    if dry_run:
        return _dry_run(rec, run_dir, f"rlhf {BY_NAME[stage].command}", [stage])
    # The stage saves the resolved recipe (recipe.yaml) once its inputs are validated (runs.prepare_stage_dir).
    module = importlib.import_module(f"rlhf_cli.stages.{stage}")
    with _writing_run(run_dir):
        module.run(rec, run_dir, resume=resume, overwrite=overwrite, accept_changes=accept)


def _stage_cli(name: str):
    """The command of a model stage: its recipe, overrides, run folder and lifecycle flags; help from rlhf_cli.runtime.steps.
    (Also `rlhf reward`'s group callback, which trains only when no subcommand such as `inspect` follows.)"""

    def command(
        ctx: typer.Context,
        recipe: RecipeOpt = "tiny",
        set_: SetOpt = None,
        output_dir: OutOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        dry_run: DryRunOpt = False,
        accept_recipe_change: AcceptOpt = False,
    ):
        if ctx.invoked_subcommand is None:
            _stage_command(name, recipe, set_, output_dir, resume, overwrite, dry_run, accept_recipe_change)

    step = BY_NAME[name]
    command.__name__ = name
    command.__doc__ = f"{step.summary}\n\nExample: {step.example}"
    return handled(command)


for _name in MODEL_STAGES:  # reward is a group: `rlhf reward` trains, `rlhf reward inspect` judges a model
    if _name != "reward":
        app.command(BY_NAME[_name].command)(_stage_cli(_name))
reward = reward_app.callback(invoke_without_command=True)(_stage_cli("reward"))  # its help: reward_app's


@reward_app.command("inspect")
@handled
def reward_inspect(
    model_dir: Annotated[Path, typer.Argument(help="A reward model folder.")],
    data: Annotated[
        str | None,
        typer.Option("--data", help="Preference data (any reward format); default: the run's held-out feedback."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the report and plots go (default: MODEL_DIR/../inspect).")
    ] = None,
):
    """Is this reward model any good? Accuracy with a 95 % interval, by margin and length, score spread, length bias.

    Example: `rlhf reward inspect runs/tiny/reward/final --data runs/tiny/feedback/rankings.jsonl`
    """
    from rlhf_cli.evaluation.reward_inspect import inspect_reward_model, output_folder

    # It writes reward_stats.json beside the model and its report to --out: into the runs they lie in, if any.
    with _writing(_run_of(model_dir)), _writing(_run_of(output_folder(model_dir, out))):
        inspect_reward_model(model_dir, data=data, out_dir=out)


@app.command()
@handled
def sample(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    overwrite: OverwriteSamplesOpt = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Model to sample from (default: the run's sft/final).")
    ] = None,
    people: PeopleOpt = False,
):
    """K answers per prompt from a model, to feedback/samples.jsonl; with --people, fresh prompts for a people's round
    (feedback/people/samples.jsonl, `feedback.people_prompts` more each time), the annotator's files untouched.

    Example: `rlhf sample --recipe tiny --set feedback.k=6`; on a finished run, for people to rank beside the toy
    annotator: `rlhf sample --recipe tiny --people --model runs/tiny/ppo/final` (then `rlhf label --people`)
    """
    from rlhf_cli.people.feedback import sample as do_sample
    from rlhf_cli.people.feedback import sample_people

    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    if people and overwrite:
        raise UserError(
            "--people adds fresh prompts to the people's round and never replaces what people ranked; leave out "
            "--overwrite."
        )
    with _writing_run(run_dir):
        if people:
            sample_people(rec, run_dir, model=model)
        else:
            do_sample(rec, run_dir, model=model, overwrite=overwrite)


@label_app.callback(invoke_without_command=True)
@handled
def label(
    ctx: typer.Context,
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    overwrite: OverwriteRankingsOpt = False,
    annotator: Annotated[
        str | None,
        typer.Option("--annotator", help="human | web | toy | a rankings file (default: the recipe's)."),
    ] = None,
    limit: LimitOpt = None,
    host: HostOpt = WEB_HOST,
    port: PortOpt = WEB_PORT,
    people: PeopleOpt = False,
):
    """Rank the samples best to worst: a person in the terminal or on a local web page, the toy world's simulated
    annotator, or a file. With --people: people rank a people's round of fresh answers (feedback/people/, sampled from
    the run's SFT model the first time) beside the annotator's rankings, which stay as they are; `rlhf reward` trains on
    both.

    Example: `rlhf label --recipe tiny --annotator human --limit 50` (skip, undo, quit, revisit the skipped ones at the
    end; starting again resumes); `rlhf label --recipe tiny --annotator web` (a page for several raters at
    http://127.0.0.1:8765/; `feedback.raters_per_prompt` sets how many rank each prompt); on the demo run, whose samples
    the toy annotator has ranked: `rlhf label --recipe tiny --people --annotator web`, then `rlhf reward --recipe tiny --overwrite`
    """
    if ctx.invoked_subcommand is not None:
        return
    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    who = annotator or rec.feedback.annotator
    if people and annotator is None and who not in ("human", "web"):
        who = "web"  # the recipe's annotator is the toy world's (or a file): a people's round is ranked on the page
    if people and who not in ("human", "web"):
        raise UserError(f"--people is a round ranked by people: use --annotator human or web, not {who}.")
    # The quit message's way back in: this command without --overwrite (which starts over); and the way to more.
    base = _command_for_run("label", recipe, set_, output_dir)
    served = _served(host, port)
    again = base + ["--people"] * people + [f"--annotator={who}"] + served * (who == "web")
    more = _more_to_rank(rec, recipe, set_, output_dir, who, people, base, served, run_dir)
    with _writing_run(run_dir):
        if people and not RunLayout(run_dir).people_samples.exists():  # the first people's round: sample it now
            from rlhf_cli.people.feedback import sample_people

            if who == "web":
                from rlhf_cli.people.web_label import check_can_serve

                check_can_serve(host, port)  # a busy port is refused before any sampling
            sample_people(rec, run_dir)
        if who == "web":
            from rlhf_cli.people.web_label import label_web

            label_web(
                rec, run_dir, host=host, port=port, overwrite=overwrite, continue_with=shlex.join(again),
                people=people, more=more,
            )  # fmt: skip
            return
        from rlhf_cli.people.feedback import label as do_label

        do_label(
            rec, run_dir, annotator=who if people else annotator, overwrite=overwrite,
            continue_with=shlex.join(again), limit=limit, people=people, more=more,
        )  # fmt: skip


def _more_to_rank(rec, recipe, set_, output_dir, who, people, base, served, run_dir) -> str:
    """What a person who finds nothing left to rank can run: on the run's samples (e.g. all ranked by the toy
    annotator) a people's round; in a people's round, more fresh prompts for it. Commands that work as printed."""
    stop = "stop this server (Ctrl-C), then run" if who == "web" else "run"
    person = who if who in ("human", "web") else "web"
    label_people = shlex.join(base + ["--people", f"--annotator={person}"] + served * (person == "web"))
    if not people:
        return (
            f"To rank fresh answers yourself beside these rankings (a people's round, in "
            f"{RunLayout(run_dir).people}), {stop}: {label_people}"
        )
    sample_more = [*_command_for_run("sample", recipe, set_, output_dir), "--people"]
    more = f"For {rec.feedback.people_prompts} more fresh prompts, {stop}: {shlex.join(sample_more)}"
    return f"{more} && {label_people}"


@app.command()
@handled
def write(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    annotator: Annotated[
        str, typer.Option("--annotator", help="web (a local page for several writers) | human (this terminal).")
    ] = "web",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="The model that drafts: sft | base | a model folder or hub id (default: write.model, else the run's "
            "sft/final when finished, else pretrain/final).",
        ),
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts", help="A prompts file (default: write.data, else feedback.data: the toy world's prompts)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Draft again; the answers written so far move to demonstrations/backup/."),
    ] = False,
    limit: LimitOpt = None,
    host: HostOpt = WEB_HOST,
    port: PortOpt = WEB_PORT,
):
    """People write SFT demonstrations: they keep, edit or replace a model's draft answers, in the terminal or on a
    local web page.

    A model drafts one answer per prompt, once (greedy unless write.temperature is set; cached in
    demonstrations/drafts.jsonl, so starting again is instant); the answers go to demonstrations/demonstrations.jsonl,
    in the `messages` form `sft.data` takes.

    Example: `rlhf write --recipe tiny` (a page for several writers at http://127.0.0.1:8765/write; skip, undo,
    starting again resumes), `rlhf write --recipe tiny --annotator human --model base --limit 20`; then
    `rlhf sft --recipe tiny --set sft.data.path=runs/tiny/demonstrations/demonstrations.jsonl`
    """
    from rlhf_cli.people.demonstrations import prepare_drafts, write_human

    if annotator not in ("web", "human"):
        raise UserError(f"--annotator {annotator}: use web (a page for several writers) or human (this terminal).")
    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    again = [*_command_for_run("write", recipe, set_, output_dir), f"--annotator={annotator}"]
    demonstrations = RunLayout(run_dir).demonstrations
    train_with = shlex.join(
        [*_command_for_run("sft", recipe, set_, output_dir), f"--set=sft.data.path={demonstrations}"]
    )
    with _writing_run(run_dir):
        if annotator == "web":
            from rlhf_cli.people.web_label import check_can_serve, require_web_extra, write_web

            require_web_extra()  # before any drafting
            check_can_serve(host, port)  # a busy port is refused before drafts are made or answers moved
        prepare_drafts(rec, run_dir, model=model, prompts=prompts, overwrite=overwrite)
        if annotator == "web":
            again += _served(host, port)
            write_web(rec, run_dir, host=host, port=port, continue_with=shlex.join(again), train_with=train_with)
        else:
            write_human(run_dir, limit=limit, continue_with=shlex.join(again), train_with=train_with)


@label_app.command("stats")
@handled
def label_stats(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its feedback/rankings.jsonl).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of tables.")] = False,
):
    """How far the raters agree: pairwise agreement and Kendall's tau between raters (with counts), and on the toy
    world each rater's agreement with the gold order.

    Example: `rlhf label stats runs/tiny`
    """
    import json

    from rlhf_cli.people.label_stats import agreement, show

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; give the folder that holds feedback/rankings.jsonl.")
    result = agreement(run_dir)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        show(result)


@app.command()
@handled
def pipeline(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    dry_run: DryRunOpt = False,
    stages: Annotated[
        str | None, typer.Option("--stages", help="Comma-separated subset, e.g. sft,sample,label,reward.")
    ] = None,
    accept_recipe_change: AcceptOpt = False,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=1,
            help="Rounds of feedback: after the first, the new policy is sampled, ranked, the reward model retrained "
            "on every ranking so far and PPO run again (rounds/round-k/; rounds.start_from in the recipe).",
        ),
    ] = 1,
):
    """The main job: pretrain -> sft -> sample -> label -> reward -> ppo -> eval -> report, in one run folder.

    Exit code 3: every step finished, but a target of the recipe (`targets:`) was missed or a red flag was raised (the
    reward model and the gold reward disagree about PPO against SFT, or the reward model is at chance); the summary
    lists each, and the cautions (findings that do not fail the run).

    Example: `rlhf pipeline` (the embedded tiny recipe), `rlhf pipeline --recipe tiny --resume`, or
    `rlhf pipeline --recipe tiny --rounds 2`
    """
    from rlhf_cli.runtime.pipeline import run_pipeline

    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    if dry_run:
        from rlhf_cli.runtime.pipeline import parse_stages

        steps = parse_stages(stages if stages is not None else rec.stages)
        planned = _dry_run(rec, run_dir, f"rlhf pipeline --stages {stages or ','.join(steps)}", steps)
        if rounds > 1:
            later = "round 2" if rounds == 2 else f"rounds 2-{rounds}"
            print(f"# then {later}: sample, label, reward, ppo, eval each, in {run_dir / 'rounds'}/round-k/")
        return planned
    from rlhf_cli.runtime.pipeline import TARGETS_MISSED

    with _writing(run_dir):
        record = run_pipeline(
            rec, run_dir, stages=stages, resume=resume, overwrite=overwrite, accept_changes=accept_recipe_change
        )
        if rounds > 1:
            from rlhf_cli.runtime.rounds import print_rounds, run_rounds

            flags = {"resume": resume, "overwrite": overwrite, "accept_changes": accept_recipe_change}
            print_rounds(run_rounds(rec, run_dir, rounds, recipe, set_ or [], **flags))
    if record.get("targets_missed") or record.get("red_flags"):
        raise typer.Exit(TARGETS_MISSED)


@app.command()
@handled
def chat(
    model_dir: Annotated[str, typer.Argument(help="Any stage's model folder (or a hub id).")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Answer this once and exit (for scripts).")
    ] = None,
    temperature: Annotated[
        float,
        typer.Option(help="0 = greedy, as the report's evaluation (the default); above 0 samples, e.g. 0.7."),
    ] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (with --temperature above 0).")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where it is faster for this model here; see `rlhf env`), bf16 or fp32.")
    ] = "auto",
    system: Annotated[
        str | None, typer.Option("--system", help="A system message before the conversation (e.g. a persona).")
    ] = None,
):
    """Talk to any stage's model through its chat template (history kept; /world, /reset, /help, /quit).

    Greedy by default, as the report's evaluation; `--temperature 0.7` samples. In a toy-world run, /world lists the
    world's animals and their facts (the run's data/toy/world.json), so you know what to ask.

    Example: `rlhf chat runs/tiny/ppo/final --prompt "what does the owl eat?"`
    """
    from rlhf_cli.models.chat import chat as do_chat

    do_chat(
        model_dir,
        prompt=prompt,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        precision=precision,
        system=system,
    )


@app.command("eval")
@handled
def eval_(
    run_dir: RunDirArg,
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="Recipe (default: the run's recipe.yaml).")
    ] = None,
    set_: SetOpt = None,
):
    """Every stage's model on the same held-out prompts: RM score, gold reward, KL, finished rate, win rates.

    Example: `rlhf eval runs/tiny`
    """
    from rlhf_cli.evaluation.evaluate import evaluate_run

    with _writing(_existing_folder(run_dir)):  # it writes <run>/eval/eval.json
        evaluate_run(run_dir, recipe=recipe, overrides=set_)


@app.command()
@handled
def report(run_dir: RunDirArg):
    """The report card: report/report.md, report.json and plots.

    Example: `rlhf report runs/tiny`
    """
    from rlhf_cli.evaluation.report import build_report

    with _writing(_existing_folder(run_dir)):  # it writes <run>/report/: not while another command writes the run
        path = build_report(run_dir)
    typer.echo(f"Report: {path}")


@app.command()
@handled
def sweep(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    param: Annotated[str, typer.Option("--param", help="Recipe key to vary, e.g. ppo.kl_coef.")] = "ppo.kl_coef",
    values: Annotated[str, typer.Option("--values", help="Comma-separated values.")] = "0,0.01,0.05,0.2",
    overwrite: OverwritePointsOpt = False,
):
    """PPO once per value from the same reward model; plots gold reward and RM score against KL (Goodhart).

    Runs the stages it needs (pretrain ... reward) first, keeping those already finished in the run folder; each point
    trains into `<run>/sweep/<param>=<value>/`, and finished points are kept on the next call (--overwrite redoes them).
    Gao et al. 2022's form is fitted to the gold gain (d = sqrt(KL); PPO: d(a - b log d), best-of-n: d(a - b d)) and
    the KL where it peaks is printed, drawn and saved in sweep.json ("fit").

    Example: `rlhf sweep --recipe tiny --param ppo.kl_coef --values 0,0.01,0.05,0.2`
    """
    from rlhf_cli.evaluation.sweep import run_sweep

    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    with _writing(run_dir):
        run_sweep(
            rec,
            run_dir,
            param=param,
            values=[v.strip() for v in values.split(",")],
            base_overrides=set_ or [],
            recipe_ref=recipe,
            overwrite=overwrite,
        )


@app.command()
@handled
def compare(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    output_dir: OutOpt = None,
    methods: Annotated[
        str | None,
        typer.Option("--methods", help="Comma-separated, e.g. ppo,grpo,best-of-n (default: all six)."),
    ] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
):
    """PPO, DPO, best-of-n, expert iteration, RLOO and GRPO from one SFT and reward model, side by side on gold reward.

    Runs (or with --resume keeps) pretrain, sft, sample, label and reward once, then every method and `rlhf eval`;
    writes `<run>/compare/compare.json`, `compare.md` and `compare.png` (gold reward against KL to SFT, per method;
    PPO's `rlhf sweep` as a curve where it has run in the same folder).

    Example: `rlhf compare --recipe tiny`, or `rlhf compare --recipe tiny --methods ppo,grpo --resume`
    """
    from rich.console import Console

    from rlhf_cli.evaluation.compare import parse_methods, print_table, run_compare

    parse_methods(methods)  # a wrong name is refused before anything runs
    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    with _writing(run_dir):
        result = run_compare(rec, run_dir, methods, resume=resume, overwrite=overwrite)
    print_table(Console(), result)


@app.command()
@handled
def check(recipe: RecipeOpt = "tiny", set_: SetOpt = None, output_dir: OutOpt = None):
    """Before spending compute: data read and validated, a rendered chat example with the loss mask, lengths, memory.

    Example: `rlhf check --recipe tiny`
    """
    from rlhf_cli.evaluation.check import check_recipe

    rec, run_dir = _recipe_and_run(recipe, set_, output_dir)
    check_recipe(rec, run_dir, start_with=shlex.join(_command_for_run("pipeline", recipe, set_, output_dir)))


@app.command()
@handled
def export(
    model_dir: Annotated[str, typer.Argument(help="A model folder from any stage.")],
    out: Annotated[Path, typer.Option("--out", help="The clean HF folder to write.")],
    push_to_hub: Annotated[str | None, typer.Option("--push-to-hub", help="Also push to this hub repo id.")] = None,
    overwrite: OverwriteOpt = False,
):
    """A clean Hugging Face folder: LoRA merged, model card, lineage (optionally pushed to the hub).

    Example: `rlhf export runs/tiny/ppo/final --out my-chatbot`
    """
    from rlhf_cli.models.export import export_model

    with _writing(_run_of(out)):  # an export into a run folder waits its turn like any other writer
        path = export_model(model_dir, out, push_to_hub=push_to_hub, overwrite=overwrite)
    typer.echo(f"Exported to {path}")


@app.command()
def env():
    """Versions of Python and the libraries, and the device — paste this into bug reports.

    Example: `rlhf env`
    """
    from rlhf_cli.runtime import precision
    from rlhf_cli.runtime.runs import library_versions

    for name, version in library_versions().items():
        typer.echo(f"{name:14s} {version}")
    import torch

    device = f"cuda x{torch.cuda.device_count()}, " if torch.cuda.is_available() else ""
    typer.echo(
        f"{'device':14s} {device}{precision.describe_hardware()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads"
    )
    typer.echo(f"{'precision':14s} {precision.rule_here()}")


@recipe_app.command("list")
def recipe_list():
    """The built-in recipes.

    Example: `rlhf recipe list`
    """
    from rlhf_cli.recipe import builtin_names, read_recipe_file

    for name in builtin_names():
        desc = read_recipe_file(name).get("description") or ""
        typer.echo(f"{name:24s} {desc}")


@recipe_app.command("show")
@handled
def recipe_show(
    name: Annotated[str, typer.Argument(help="A built-in name or a YAML path.")] = "tiny", set_: SetOpt = None
):
    """Print the recipe as a run uses it (defaults < file < --set): the values the stages resolve at run time filled in,
    and beside each setting the recipe file changes from the default, the file's own reason for it (a YAML document).

    Example: `rlhf recipe show tiny --set pretrain.training.max_steps=5`
    """
    from rlhf_cli.recipe import show_yaml
    from rlhf_cli.stages.common import resolved_settings

    rec = _load(name, set_)
    typer.echo(show_yaml(rec, name, set_, resolved_settings(rec)), nl=False)


@data_app.command("toy")
@handled
def data_toy(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the toy world's data sets into.")],
    seed: Annotated[int, typer.Option("--seed", help="World seed: the same seed gives the same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a toy world already in --out.")] = False,
):
    """Write the toy world's data sets (pre-training corpus, SFT conversations, prompts, probes).

    Example: `rlhf data toy --out toy --seed 0`
    """
    from rlhf_cli.data.toy import ToyWorld

    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give --out a folder (it is created if missing).")
    inside = next((p for p in out.absolute().parents if p.exists()), None)
    if inside is not None and not inside.is_dir():
        raise UserError(f"--out {out}: {inside} is a file, so no folder can be made inside it; give another --out.")
    if (out / "world.json").exists() and not overwrite:
        raise UserError(f"{out} already holds a toy world; pass --overwrite to replace it, or another --out.")

    with _writing(_run_of(out)):
        for name, path in ToyWorld(seed).write(out).items():
            typer.echo(f"{name:16s} {path}")


def _join_cpu_process_group():
    """Under `accelerate launch` (recipes/accelerate/cpu.yaml) or `torchrun` on a machine without a GPU, make every
    process join one gloo group: accelerate counts a CPU process as a lone process unless ACCELERATE_USE_CPU is set,
    and a bare PartialState() made before the Trainer's would too, so the shared state is set up here, once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch

    if torch.cuda.is_available():
        return
    engine = next((e for e in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{e}") == "true"), None)
    if engine:  # accelerate runs these only on GPUs; on CPU processes it would quietly fall back to data parallel
        name = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}[engine]
        print(
            f"Error: {name} runs on GPUs only (accelerate's {name} mode needs CUDA devices); on this machine without "
            "a GPU use --config_file rlhf_cli/recipes/accelerate/cpu.yaml (data parallel over CPU processes).",
            file=sys.stderr,
        )
        sys.exit(2)
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    from accelerate import PartialState

    PartialState(cpu=True)


def main():
    _join_cpu_process_group()
    app()


if __name__ == "__main__":
    sys.exit(main())
