"""`xdray <command> CONFIG [--set key=value ...]` and `xdray data NAME` (samples, transfer-sets, teachers,
multilingual, token-sets, paraphrase, spam, general-corpus).

Every problem the user can fix ends as one line on stderr and exit status 2 (bad config / input) or 1
(a step failed); tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xdray.errors import XdrayError

COMMANDS = {
    "pipeline": "teacher → label → distill → search (→ transfer → export), skipping steps whose outputs are complete",
    "teacher": "fine-tune the teacher on the labeled train split (Ray Train + DeepSpeed)",
    "label": "label the transfer corpus with the teacher (Ray Data actor pool) into Parquet",
    "distill": "distil the student with the configured schedule (default: the paper's progressive one) on Ray Train + DeepSpeed",
    "search": "search student architectures with Ray Tune, every trial on the same Parquet",
    "transfer": "fine-tune the distilled student (or any HF encoder) on target tasks: classes, pairs, NER, regression",
    "export": "export a trained model to ONNX fp32 and int8, checked against torch on dev/test, with a latency table",
    "study": "one student per source task (study.sources) over the same corpus, each fine-tuned on the targets",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdray", description="XtremeDistil transformers on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="YAML job spec, e.g. jobs/quickstart.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set distill.workers=1 (repeatable)")
        p.add_argument("--verbose", action="store_true",
                       help="show Ray's, Tune's and Hugging Face's own output live (it always goes to the log file)")
    submit = sub.add_parser("submit", help="run a step (default: the pipeline) as a Ray Job on a cluster")
    submit.add_argument("config", help="YAML job spec; relative paths in it resolve on the cluster")
    submit.add_argument("--step", default="pipeline", choices=list(COMMANDS), help="what to run (default pipeline)")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--address", help="Ray Jobs server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    submit.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the job driver")
    jobs = sub.add_parser("jobs", help="status, logs or stop of a submitted job")
    jobs.add_argument("action", choices=["status", "logs", "stop"])
    jobs.add_argument("submission_id", metavar="ID")
    jobs.add_argument("--address", help="Ray Jobs server (default: $RAY_ADDRESS)")
    jobs.add_argument("--follow", action="store_true", help="with logs: stream until the job ends")
    data = sub.add_parser("data", help="prepare data").add_subparsers(dest="data_command", required=True)
    samples = data.add_parser("samples", help="prepare the offline sample data (VADER movie task, MiniLM-L6)")
    samples.add_argument("--dir", default="data/samples", type=Path, help="where to write (default data/samples)")
    transfer = data.add_parser("transfer-sets", help="prepare the transfer tasks (WordNet verbs, VADER tweets)")
    transfer.add_argument("--dir", default="data/transfer", type=Path, help="where to write (default data/transfer)")
    transfer.add_argument("--data-verb", type=Path, metavar="PATH",
                          help="WordNet 3.0 data.verb to use (default: apt-get download wordnet-base)")
    teachers = data.add_parser("teachers", help="prepare offline teachers (mpnet-base, me5-small)")
    teachers.add_argument("--dir", default="data/teachers", type=Path, help="where to write (default data/teachers)")
    teachers.add_argument("names", nargs="*", metavar="NAME", help="mpnet-base and/or me5-small (default: both)")
    multi = data.add_parser("multilingual", help="prepare the cross-lingual LibreOffice help task and corpus")
    multi.add_argument("--dir", default="data/multilingual", type=Path,
                       help="where to write (default data/multilingual)")
    multi.add_argument("--languages", default="de,fr,es,it,ja",
                       help="comma-separated help languages Debian ships (default de,fr,es,it,ja)")
    tokens = data.add_parser("token-sets", help="prepare WNUT-16 Twitter NER and a tweet transfer corpus")
    tokens.add_argument("--dir", default="data/tokens", type=Path, help="where to write (default data/tokens)")
    para = data.add_parser("paraphrase", help="prepare KJV/WEB Bible paraphrase detection (a sentence-pair task)")
    para.add_argument("--dir", default="data/paraphrase", type=Path, help="where to write (default data/paraphrase)")
    spam = data.add_parser("spam", help="prepare SpamAssassin spam detection (real e-mail)")
    spam.add_argument("--dir", default="data/spam", type=Path, help="where to write (default data/spam)")
    general = data.add_parser("general-corpus", help="prepare a general English transfer corpus (300k+ sentences)")
    general.add_argument("--dir", default="data/general", type=Path, help="where to write (default data/general)")
    general.add_argument("--held-out", dest="held_out", action="append", type=Path, metavar="DIR",
                         help="task directory whose dev/test texts must stay out (repeatable; default: "
                              "data/samples, data/transfer, data/tokens, data/paraphrase, data/spam where present)")
    general.add_argument("--pairs", metavar="N",
                         help="also write pairs.txt: N sentences (or all), each with its nearest corpus neighbour "
                              "(TF-IDF), the corpus a sentence-pair source task labels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":
            if args.data_command == "transfer-sets":
                return _transfer_sets(args.dir, args.data_verb)
            if args.data_command == "teachers":
                return _teachers(args.dir, args.names)
            if args.data_command == "token-sets":
                return _token_sets(args.dir)
            if args.data_command == "paraphrase":
                return _paraphrase(args.dir)
            if args.data_command == "spam":
                return _spam(args.dir)
            if args.data_command == "general-corpus":
                return _general_corpus(args.dir, args.held_out, args.pairs)
            if args.data_command == "multilingual":
                return _multilingual(args.dir, [x for x in args.languages.split(",") if x.strip()])
            return _samples(args.dir)
        if args.command == "submit":
            from xdray.submit import submit

            return submit(args.config, args.overrides, args.step, args.address, args.follow, args.entrypoint_cpus)
        if args.command == "jobs":
            from xdray.submit import jobs_command

            return jobs_command(args.action, args.submission_id, args.address, args.follow)
        return _run(args.command, args.config, args.overrides, args.verbose)
    except XdrayError as e:
        print(f"xdray {args.command}: error: {e}", file=sys.stderr)
        return 2 if type(e).__name__ == "ConfigError" else 1
    except KeyboardInterrupt:
        print(f"xdray {args.command}: interrupted; completed steps are kept, rerun to continue", file=sys.stderr)
        return 130


def _rows(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _samples(directory: Path) -> int:
    from xdray.data.samples import prepare_samples

    manifest = prepare_samples(directory)
    rows = _rows(manifest["rows"])
    print(f"sample data ready in {directory}: movie sentiment ({rows}), {manifest['transfer_lines']} transfer lines")
    return 0


def _teachers(directory: Path, names: list[str]) -> int:
    from xdray.data.teachers import prepare_teachers

    manifest = prepare_teachers(directory, names)
    for name, entry in manifest.items():
        check = entry.get("check", {}).get("retrieval_acc@1")
        print(f"teacher ready: {directory / name} ({entry['params'] / 1e6:.1f}M params"
              + (f"; retrieval acc@1 {check}" if check else "") + ")")
    return 0


def _multilingual(directory: Path, languages: list[str]) -> int:
    from xdray.data.multilingual import prepare_multilingual

    manifest = prepare_multilingual(directory, languages)
    rows, langs = manifest["rows"], ", ".join(manifest["languages"])
    print(f"multilingual data ready in {directory}: libreoffice {len(manifest['labels'])}-class (train "
          f"{rows['train']}, dev {rows['dev']}, test {rows['test']} in each of en, {langs}), "
          f"{manifest['transfer_lines']} transfer lines")
    return 0


def _token_sets(directory: Path) -> int:
    from xdray.data.token_sets import prepare_token_sets

    manifest = prepare_token_sets(directory)
    task, transfer = manifest["wnut16"], manifest["transfer"]
    rows = _rows(task["rows"])
    print(f"token sets ready in {directory}: wnut16 NER, {len(task['entities']['train'])} entity types ({rows}), "
          f"{transfer['lines']} transfer tweets ({transfer['dropped_held_out']} held-out tweets dropped)")
    return 0


def _paraphrase(directory: Path) -> int:
    from xdray.data.paraphrase import prepare_paraphrase

    manifest = prepare_paraphrase(directory)
    rows = _rows(manifest["rows"])
    print(f"paraphrase task ready in {directory}: bible KJV/WEB same verse or a neighbour ({rows})")
    return 0


def _spam(directory: Path) -> int:
    from xdray.data.spam import prepare_spam

    manifest = prepare_spam(directory)
    rows = _rows(manifest["rows"])
    print(f"spam task ready in {directory}: spam_assassin ham/spam e-mail ({rows})")
    return 0


def _general_corpus(directory: Path, held_out: list[Path] | None, pairs: str | None) -> int:
    from xdray.data.general_corpus import prepare_general_corpus

    if pairs is not None and pairs != "all" and not (pairs.isdigit() and int(pairs) > 0):
        raise XdrayError(f"--pairs {pairs}: not a number of pairs; fix: give one of at least 1 (e.g. --pairs 20000) "
                         "or all")
    manifest = prepare_general_corpus(directory, held_out, pairs if pairs in (None, "all") else int(pairs))
    sources = ", ".join(f"{name} {c.get('kept', 0):,}" for name, c in manifest["sources"].items())
    held = manifest["held_out"]
    print(f"general corpus ready in {directory}: {manifest['sentences']:,} sentences ({sources}); "
          f"{manifest['dropped_held_out']:,} dropped as dev/test text of {len(held['files'])} held-out files in "
          f"{', '.join(held['directories']) or 'no directory'}")
    if pairs is not None:
        made = manifest["pairs"]
        print(f"sentence pairs ready in {directory / 'pairs.txt'}: {made['rows']:,} (nearest neighbour by TF-IDF, "
              f"median cosine {made['similarity']['median']})")
    return 0


def _transfer_sets(directory: Path, data_verb: Path | None) -> int:
    from xdray.data.transfer_sets import prepare_transfer_sets

    manifest = prepare_transfer_sets(directory, data_verb)
    verbs, tweets = (", ".join(f"{k} {v}" for k, v in manifest[task]["rows"].items())
                     for task in ("wordnet_verbs", "vader_tweets"))
    classes = len(manifest["wordnet_verbs"]["class_counts"]["train"])
    print(f"transfer sets ready in {directory}: wordnet_verbs {classes}-class ({verbs}), "
          f"vader_tweets regression ({tweets})")
    return 0


def _run(command: str, config_path: str, overrides: list[str], verbose: bool) -> int:
    from xdray.checks import check_inputs, pipeline_steps
    from xdray.config import load_config

    cfg = load_config(config_path, overrides)
    check_inputs(cfg, pipeline_steps(cfg) if command == "pipeline" else (command,))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from xdray.console import console

    with console.session(cfg.output_dir, f"{command} {config_path}", verbose):
        quiet_libraries(verbose)
        from xdray.common.tracking import Tracker
        from xdray.pipeline import run_pipeline, run_step

        tracker = Tracker.for_config(cfg)
        if command == "pipeline":
            run_pipeline(cfg, tracker)
        elif command == "study":
            from xdray.study import run_study

            run_study(cfg, tracker)
        else:
            run_step(cfg, tracker, command)
            console.line(f"summary: {cfg.step_dir(command) / 'summary.json'}")
    return 0


def quiet_libraries(verbose: bool) -> None:
    """Progress bars of libraries would fill the log with redrawn lines: off unless ``--verbose``."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm in Ray's workers; xdray's bars set disable=False
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


if __name__ == "__main__":
    sys.exit(main())
