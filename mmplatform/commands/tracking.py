"""``mmplatform tracking replay``: push metrics kept while an Aim server was unreachable."""

from __future__ import annotations

import argparse

from mmplatform.cli import register_command


def _replay(args: argparse.Namespace) -> int:
    from mmplatform import paths
    from mmplatform.tracking import replay_fallback

    fallback = args.fallback_dir or str(paths.data_root() / "aim_fallback")
    results = replay_fallback(fallback, args.repo)
    for result in results:
        print(f"{result.journal}: {result.pushed} points -> run {result.run_hash} in {result.repo}")
    if not results:
        print(f"nothing to replay in {fallback}")
    return 0


@register_command("tracking")
def add(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("tracking", help="Aim tracking maintenance")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    replay = verbs.add_parser("replay", help="push journals left by an unreachable Aim server into a repo")
    replay.add_argument("--fallback-dir", help="default: <data root>/aim_fallback")
    replay.add_argument("--repo", help="target repo (default: the repo each journal was meant for)")
    replay.set_defaults(run=_replay)
