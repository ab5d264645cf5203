"""mkdocs hook: the report page is REPORT.md itself, with the figures it shows from results/ (no copies kept
in docs/, so the site cannot drift from the report)."""
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    files.append(File.generated(config, "report.md", content=(ROOT / "REPORT.md").read_text()))
    for png in sorted((ROOT / "results").glob("*/*.png")):
        files.append(File.generated(config, png.relative_to(ROOT).as_posix(), abs_src_path=str(png)))
    return files
