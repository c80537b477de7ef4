"""Manual pages in roff: trafmetuxd(8) and trafmetuxctl(1) from their argparse parsers (the
definitions --help prints), trafmetux.toml(5) from docs/config.md (the configuration reference,
which tests/unit/test_docgen.py checks against config.py's models).

A build tool, not part of the running daemon: `make man` runs it (trafmetuxd.docgen).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Sequence


def escape(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, non-ASCII as \\[uXXXX], no line
    starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def inline(md: str) -> str:
    """Markdown inline markup to roff fonts: `code` and **bold** bold, *em* italic, links bare."""
    md = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", md)
    parts = re.split(r"(`[^`]*`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)", md)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append("\\fB" + escape(part[1:-1]) + "\\fR")
        elif part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append("\\fB" + escape(part[2:-2]) + "\\fR")
        elif part.startswith("*") and part.endswith("*") and len(part) > 2:
            out.append("\\fI" + escape(part[1:-1]) + "\\fR")
        else:
            out.append(escape(part))
    return "".join(out)


def header(name: str, section: int, summary: str, version: str, manual: str) -> list[str]:
    """The title and NAME section."""
    return [
        f'.TH {name.upper()} {section} "" "trafmetux {version}" "{manual}"',
        ".ad l",
        ".nh",
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
    ]


def see_also(name: str) -> list[str]:
    """The SEE ALSO section: the other two pages."""
    others = [(n, s) for n, s in (("trafmetuxd", 8), ("trafmetuxctl", 1),
                                  ("trafmetux.toml", 5)) if n != name]  # fmt: skip
    refs = [f".BR {escape(n)} ({s}){',' if i < len(others) - 1 else ''}"
            for i, (n, s) in enumerate(others)]  # fmt: skip
    return [".SH SEE ALSO", *refs]


# --- argparse -> roff ---------------------------------------------------------------------


def visible(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The parser's actions --help shows (not the subcommand table, not SUPPRESSed ones)."""
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction):
            yield action


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in --help's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def metavar(action: argparse.Action) -> str:
    """The placeholder of an option's value or a positional, as --help shows it."""
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def takes_value(action: argparse.Action) -> bool:
    """Whether an option is followed by a value."""
    return action.nargs != 0


def synopsis_item(action: argparse.Action) -> str:
    """One action in a synopsis: [\\-n N], MONITOR, [NAME], [MONITOR ...]."""
    if action.option_strings:
        flag = "\\fB" + escape(action.option_strings[0]) + "\\fR"
        value = f" \\fI{escape(metavar(action))}\\fR" if takes_value(action) else ""
        return f"[{flag}{value}]" if not action.required else flag + value
    name = "\\fI" + escape(metavar(action)) + "\\fR"
    if action.nargs == "*":
        return f"[{name} ...]"
    if action.nargs == "?":
        return f"[{name}]"
    return name + (" ..." if action.nargs == "+" else "")


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An action's help with %(default)s and the like expanded, as --help prints it."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def option_items(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> list[str]:
    """Tagged paragraphs, one per option or positional (the value named once, at the end)."""
    lines = []
    for action in visible(parser):
        if action.dest in skip:
            continue
        if action.option_strings:
            value = f" \\fI{escape(metavar(action))}\\fR" if takes_value(action) else ""
            tag = ", ".join(f"\\fB{escape(s)}\\fR" for s in action.option_strings) + value
        else:
            tag = "\\fI" + escape(metavar(action)) + "\\fR"
        lines += [".TP", tag, escape(help_text(parser, action))]
    return lines


def command_page(
    parser: argparse.ArgumentParser, section: int, summary: str, version: str, manual: str
) -> str:
    """A whole manual page for a program from its parser (and its subcommands' parsers)."""
    name = parser.prog
    subs = subcommands(parser)
    items = " ".join(synopsis_item(a) for a in visible(parser))
    items += " \\fICOMMAND\\fR [\\fIARGS\\fR]" if subs else ""
    lines = [*header(name, section, summary, version, manual), ".SH SYNOPSIS",
             f".B {escape(name)}", items]  # fmt: skip
    lines += [".SH DESCRIPTION", escape(parser.description or summary)]
    lines += [".SH OPTIONS", *option_items(parser)]
    if subs:
        lines.append(".SH COMMANDS")
        for sub_name, short, sub in subs:
            usage = " ".join(synopsis_item(a) for a in visible(sub) if a.dest != "help")
            lines += [f'.SS "{escape(sub_name)}"', f".B {escape(name)} {escape(sub_name)}",
                      usage, ".PP", escape(sub.description or short)]  # fmt: skip
            lines += option_items(sub, skip=("help",))
            if sub.epilog and sub.epilog not in (parser.epilog or ""):
                lines += [".PP", escape(sub.epilog)]
    if parser.epilog:
        lines += [".SH NOTES", escape(parser.epilog)]
    return "\n".join([*lines, *see_also(name)]) + "\n"


# --- docs/config.md -> roff ----------------------------------------------------------------


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def table(rows: Sequence[str]) -> list[str]:
    """A Markdown table as tagged paragraphs: the first cell the tag, the middle ones labelled
    with their heading, the last one (what it means) as the paragraph.

    Side-by-side tables (an empty heading cell between them) are read one after the other.
    """
    heads, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
    groups, start = [], 0
    for i, head in enumerate([*heads, ""]):
        if head == "":
            if i > start:
                groups.append((start, i))
            start = i + 1
    lines = []
    for lo, hi in groups:
        for cells in body:
            cells = cells + [""] * (len(heads) - len(cells))
            if not cells[lo]:
                continue
            labelled = [f"{heads[i]}: {inline(cells[i])}" for i in range(lo + 1, hi - 1)
                        if cells[i]]  # fmt: skip
            last = inline(cells[hi - 1]) if hi - 1 > lo else ""
            lines += [".TP", inline(cells[lo])]
            lines += ["; ".join(labelled), ".br", last] if labelled else [last]
    return lines


def markdown_page(md: str, name: str, section: int, summary: str, version: str) -> str:
    """A manual page from a Markdown reference: its headings, paragraphs, lists, tables, code."""
    lines = header(name, section, summary, version, "File Formats")
    source = md.split("\n")
    i = 0
    while i < len(source):
        line = source[i]
        if line.startswith("# "):
            lines.append(".SH DESCRIPTION")
        elif line.startswith("## "):
            lines.append(f'.SH "{inline(line[3:]).upper()}"')
        elif line.startswith("### "):
            lines.append(f'.SS "{inline(line[4:])}"')
        elif line.startswith("```"):
            end = source.index("```", i + 1)
            lines += [".PP", ".nf", *(escape(s) for s in source[i + 1 : end]), ".fi"]
            i = end
        elif line.startswith("|"):
            end = i
            while end < len(source) and source[end].startswith("|"):
                end += 1
            lines += table(source[i:end])
            i = end - 1
        elif line.startswith("- "):
            lines += [".IP \\(bu 2", inline(line[2:])]
        elif line.startswith("  ") and line.strip():
            lines.append(inline(line.strip()))
        elif not line.strip():
            lines.append(".PP")
        else:
            lines.append(inline(line))
        i += 1
    return "\n".join(_squeeze([*lines, *see_also(name)])) + "\n"


def _squeeze(lines: list[str]) -> list[str]:
    """No paragraph macro directly before another section or paragraph macro (groff warns)."""
    out: list[str] = []
    for line in lines:
        if out and out[-1] == ".PP" and line.split(" ")[0] in (".PP", ".SH", ".SS", ".TP", ".IP"):
            out.pop()
        out.append(line)
    return out
