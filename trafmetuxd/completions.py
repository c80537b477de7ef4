"""Bash and zsh completion for trafmetuxctl, generated from its argparse parser.

Subcommands, options and option choices come from the parser; monitor and quota names from the
daemon, asked by `trafmetuxctl --complete monitors|quotas` (quick, silent when unreachable).
A build tool like manpages.py: `make man` writes the scripts (trafmetuxd.docgen).
"""

from __future__ import annotations

import argparse
import re

from trafmetuxd.manpages import help_text, subcommands, takes_value, visible

# positional placeholder -> what `trafmetuxctl --complete` lists for it
NAMES = {"MONITOR": "monitors", "NAME": "quotas"}
FILE_OPTIONS = ("--socket",)  # options whose value is a path


def _value_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option that takes a value, hidden ones too (the words after them are values)."""
    return [a for a in parser._actions if a.option_strings and takes_value(a)]


def _names(parser: argparse.ArgumentParser) -> str:
    """What the positionals of a subcommand complete to: monitors, quotas or nothing."""
    for action in visible(parser):
        if not action.option_strings and str(action.metavar) in NAMES:
            return NAMES[str(action.metavar)]
    return ""


def _words(values: list[str]) -> str:
    return " ".join(values)


def _case_values(prefix: str, parser: argparse.ArgumentParser) -> list[str]:
    """bash case arms: an option's choices, files, or nothing for a free value."""
    arms = []
    for action in _value_options(parser):
        pattern = "|".join(f"{prefix}:{s}" for s in action.option_strings)
        if action.choices is not None:
            reply = (
                f'COMPREPLY=($(compgen -W "{_words([str(c) for c in action.choices])}" -- "$cur"))'
            )
        elif action.option_strings[-1] in FILE_OPTIONS:
            reply = 'COMPREPLY=($(compgen -f -- "$cur"))'
        else:
            reply = "COMPREPLY=()"
        arms.append(f"        {pattern}) {reply}; return ;;")
    return arms


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in visible(parser) for s in a.option_strings]


def bash(parser: argparse.ArgumentParser) -> str:
    """The bash completion script (complete -F _trafmetuxctl trafmetuxctl)."""
    subs = subcommands(parser)
    prog = parser.prog
    skip = "|".join(s for a in _value_options(parser) for s in a.option_strings)
    arms = _case_values("", parser)
    per_command = []
    for name, _, sub in subs:
        arms += _case_values(name, sub)
        per_command.append(
            f'        {name}) opts="{_words(_options(sub))}"; names="{_names(sub)}" ;;'
        )
    return "\n".join([
        f"# bash completion for {prog}; generated from its argparse parser, do not edit.",
        f"_{prog}() {{",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
        '    local cmd="" sock="" opts="" names="" i word',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        word=${COMP_WORDS[i]}",
        "        case $word in",
        "            --socket) sock=${COMP_WORDS[i+1]}; ((i++)) ;;",
        f"            {skip}) ((i++)) ;;",
        "            -*) ;;",
        "            *) cmd=$word; break ;;",
        "        esac",
        "    done",
        '    case "$cmd:$prev" in',
        *arms,
        "    esac",
        '    if [[ -z $cmd ]]; then',
        '        if [[ $cur == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{_words(_options(parser))}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "{_words([n for n, _, _ in subs])}" -- "$cur"))',
        "        fi",
        "        return",
        "    fi",
        "    case $cmd in",
        *per_command,
        "    esac",
        '    if [[ $cur == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        '    elif [[ -n $names ]]; then',
        '        COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" ${sock:+--socket "$sock"} '
        '--complete "$names" 2>/dev/null)" -- "$cur"))',
        "    fi",
        "}",
        f"complete -F _{prog} {prog}",
        "",
    ])  # fmt: skip


def _zsh_text(text: str) -> str:
    """A description inside a zsh _arguments spec: first sentence, no []:' characters."""
    first = text.split(". ")[0].split("; ")[0].rstrip(".")
    return re.sub(r"[\[\]:'\\`$]", "", first)


def _zsh_specs(parser: argparse.ArgumentParser) -> list[str]:
    specs = []
    for action in visible(parser):
        text = _zsh_text(help_text(parser, action))
        if action.option_strings:
            flags = action.option_strings
            value = ""
            if takes_value(action):
                if action.choices is not None:
                    value = f":value:({' '.join(str(c) for c in action.choices)})"
                elif flags[-1] in FILE_OPTIONS:
                    value = ":path:_files"
                else:
                    value = ":value: "
            excl = "(- *)" if action.dest in ("help", "version") else f"({' '.join(flags)})"
            for flag in flags:
                specs.append(f"'{excl}{flag}[{text}]{value}'")
        elif str(action.metavar) in NAMES:
            many = "*" if action.nargs in ("*", "+") else "1"
            kind = NAMES[str(action.metavar)]
            specs.append(f"'{many}:{kind}:_{parser.prog.split()[0]}_names {kind}'")
    return specs


def zsh(parser: argparse.ArgumentParser) -> str:
    """The zsh completion function (#compdef trafmetuxctl), for a site-functions directory."""
    prog = parser.prog
    subs = subcommands(parser)
    lines = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}; generated from its argparse parser, do not edit.",
        "",
        f"_{prog}_names() {{",
        "  local -a found sock",
        "  [[ -n $socket_given ]] && sock=(--socket $socket_given)  # set by the caller below",
        "  # _arguments calls this with compadd's options first, the kind of names last",
        f'  found=(${{(f)"$({prog} $sock --complete ${{@[-1]}} 2>/dev/null)"}})',
        '  compadd "${@[1,-2]}" -a found',
        "}",
        "",
        f"_{prog}() {{",
        "  local curcontext=$curcontext state line",
        "  typeset -A opt_args",
        "  _arguments -C \\",
        *(f"    {spec} \\" for spec in _zsh_specs(parser)),
        "    '1:command:->command' \\",
        "    '*::argument:->argument'",
        "  local socket_given=${opt_args[--socket]}  # the subcommand's _arguments resets opt_args",
        "  case $state in",
        "    command)",
        "      local -a commands",
        "      commands=(",
        *(f"        '{name}:{_zsh_text(short)}'" for name, short, _ in subs),
        "      )",
        "      _describe command commands ;;",
        "    argument)",
        "      case $words[1] in",
    ]
    for name, _, sub in subs:
        specs = _zsh_specs(sub)
        lines.append(f"        {name}) _arguments {' '.join(specs)} ;;")
    lines += ["      esac ;;", "  esac", "}", "", f'_{prog} "$@"', ""]
    return "\n".join(lines)
