"""A rule's script has the rule's name (CONTRIBUTING.md): rule X runs workflow/scripts/X.py."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"
# rules that run another rule's script on other inputs (the exception list: each entry must exist)
SHARED = {"layer_lora_extract": "extract.py"}  # the extraction itself, on a layer-LoRA arm's merged model
FIGURE_SCRIPT = "figure.py"  # every fig_<name> rule is generated from the family registry and draws by name


def rule_scripts(text: str) -> dict[str, str | None]:
    """{rule name: the file its `script:` names, None for a rule without one} of one Snakemake file.
    A generated rule (`rule:` with `name:`) is named by the line after `name:`."""
    out, rule, expect = {}, None, None
    for line in text.splitlines():
        stripped = line.strip()
        if expect:
            if stripped:
                value = re.sub(r"^f(?=[\"'])", "", stripped).strip("\"',")
                if expect == "name":
                    rule = value
                    out[rule] = None
                else:
                    out[rule] = Path(value).name
                expect = None
            continue
        named = re.match(r"rule\s+(\w+)\s*:", stripped)
        if named:
            rule = named.group(1)
            out[rule] = None
        elif re.fullmatch(r"rule\s*:", stripped):
            rule = None
        elif stripped == "name:" and rule is None:
            expect = "name"
        elif stripped == "script:" and rule is not None:
            expect = "script"
    return out


def all_rule_scripts() -> dict[str, str | None]:
    found = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        found |= rule_scripts(path.read_text())
    return found


def test_a_rules_script_has_the_rules_name():
    rules = all_rule_scripts()
    with_script = {rule: script for rule, script in rules.items() if script}
    assert len(with_script) > 25 and any(r.startswith("fig_") for r in with_script)  # the parse found them
    wrong = {
        rule: script
        for rule, script in with_script.items()
        if script != f"{rule}.py"
        and SHARED.get(rule) != script
        and not (rule.startswith("fig_") and script == FIGURE_SCRIPT)
    }
    assert wrong == {}, "rule -> script whose name is not the rule's (CONTRIBUTING.md)"
    assert all(with_script.get(rule) == script for rule, script in SHARED.items())  # no stale exception


def test_every_script_is_a_rules_script():
    used = {script for script in all_rule_scripts().values() if script}
    assert {p.name for p in SCRIPTS.glob("*.py")} - used == set()


def test_the_parse_reads_named_and_generated_rules():
    text = """
rule a:
    input: "x"
    script:
        "../scripts/a.py"

rule b:
    shell: "true"

for _n in ("x",):
    rule:
        name:
            f"fig_{_n}"
        script:
            "../scripts/figure.py"
"""
    assert rule_scripts(text) == {"a": "a.py", "b": None, "fig_{_n}": "figure.py"}
