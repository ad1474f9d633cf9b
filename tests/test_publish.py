"""Hub-ready families (issue 25): model cards that parse with huggingface_hub and say what each member is and how it
measured; `boomerang publish` lists exactly what it would upload, and refuses clearly when the Hub is off."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard
from tiny import save_bpe_pair, tiny_corpus

from boomerang.cards import teacher_info
from boomerang.cli.app import run
from boomerang.family import load_family
from boomerang.publish import plan_publish


@pytest.fixture
def family_with_sweep(tmp_path):
    """A tiny family written the way `boomerang demo` lays a run out (RUN/distill/student, RUN/sweeps/...), with a
    real sweep of it, exported with GGUF files."""
    t_dir, s_dir = save_bpe_pair(tmp_path, "llama")
    run_dir = tmp_path / "run"
    student = run_dir / "distill" / "student"
    student.parent.mkdir(parents=True)
    shutil.move(s_dir, student)
    text = tiny_corpus(tmp_path / "val", n_docs=6, words=(30, 60))
    sweep = run_dir / "sweeps" / "val" / "main-last"
    args = [
        "sweep",
        "--teacher",
        str(t_dir),
        "--student",
        str(student),
        "--data",
        str(text),
        "--out",
        str(sweep),
    ]
    assert (
        run([*args, "--sizes", "0,2,4", "--context", "16", "--max-tokens", "48", "--baselines", "naive"]) == 0
    )
    out = tmp_path / "fam"
    fam = ["family", "--teacher", str(t_dir), "--student", str(student), "--out", str(out), "--sizes", "0-4"]
    assert (
        run([*fam, "--format", "gguf", "--base-model", "org/teacher", "--license", "mit", "--name", "tiny"])
        == 0
    )
    return out, sweep, t_dir, student


def test_cards_parse_and_say_what_each_member_is(family_with_sweep):
    out, sweep, _, _ = family_with_sweep
    manifest = load_family(out)
    results = json.loads((sweep / "results.json").read_text())
    ppl = {r["K"]: r["ppl"] for r in results["rows"] if r["method"] == "boomerang"}
    assert sorted(ppl) == [0, 2, 4]
    top = ModelCard.load(out / "README.md")
    for card in [top, *(ModelCard.load(out / r["dir"] / "README.md") for r in manifest["members"])]:
        assert card.data.base_model == "org/teacher" and card.data.library_name == "transformers"
        assert card.data.license == "mit" and card.data.pipeline_tag == "text-generation"
        assert {"boomerang-distillation", "knowledge-distillation", "gguf"} <= set(card.data.tags)
        assert "@inproceedings{kangaslahti2026boomerang" in card.text and "2510.05064" in card.text
    assert top.text.startswith("\n# tiny\n")
    for row in manifest["members"]:
        text = ModelCard.load(out / row["dir"] / "README.md").text
        assert f"| layers | {row['n_layers']} |" in text
        assert f'from_pretrained("path/to/family/{row["dir"]}")' in text
        assert row["gguf"]["file"] in text and row["gguf"]["file"] in top.text
        # found in the run's sweeps/ folder: the measured perplexity of exactly this member
        if row["K"] in ppl:
            assert row["scores"][0]["value"] == ppl[row["K"]]
            assert f"| ppl on val | {ppl[row['K']]:.3f}" in text
        else:
            assert "scores" not in row and "| ppl on" not in text
    # the reference call is shown for the members it builds: its num_layers_to_patch=0 already takes the trailing
    # single-layer blocks (K = 2), so it has no call for K = 0 and 1
    ref = {
        r["K"]: "from boomerang.compat import build_intermediate_model"
        in ModelCard.load(out / r["dir"] / "README.md").text
        for r in manifest["members"]
    }
    assert ref == {0: False, 1: False, 2: True, 3: True, 4: True}
    row3 = manifest["members"][3]
    assert (
        "num_layers_to_patch=1, patch_first_k_layers=False" in (out / row3["dir"] / "README.md").read_text()
    )


def test_a_named_sweep_of_another_family_is_refused(family_with_sweep, tmp_path, capsys):
    _, sweep, t_dir, _ = family_with_sweep
    other = tmp_path / "other"
    other.mkdir()
    _, s2 = save_bpe_pair(other, "llama")  # the same shapes, another student
    args = [
        "family",
        "--teacher",
        str(t_dir),
        "--student",
        str(s2),
        "--out",
        str(tmp_path / "f2"),
        "--sweep",
        str(sweep),
    ]
    assert run(args) == 2
    assert "does not describe this family" in capsys.readouterr().err and not (tmp_path / "f2").exists()
    assert run([*args[:-2], "--sweep", str(tmp_path / "nowhere")]) == 2


def test_dry_run_lists_every_file_and_the_card(family_with_sweep, capsys):
    out = family_with_sweep[0]
    plan = plan_publish(out, "someone/tiny-family")
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert plan.paths == on_disk  # every file, the cards among them (rendered for the repository)
    assert sum(1 for p in plan.paths if p.endswith(".gguf")) == 5
    card = plan.cards["K02-4layers/README.md"]
    assert 'from_pretrained("someone/tiny-family", subfolder="K02-4layers")' in card
    assert "huggingface-cli download someone/tiny-family gguf/K02-4layers.f16.gguf" in card
    ModelCard(card)  # parses
    capsys.readouterr()
    assert run(["publish", str(out), "someone/tiny-family", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert all(p in shown for p in on_disk) and f"would upload {len(on_disk)} files" in shown
    assert plan.cards["README.md"].strip() in shown  # the family's card, in full


def test_publish_offline_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(["publish", str(tmp_path / "no-such-family"), "someone/x"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "nothing was uploaded" in err and "--dry-run" in err


def test_publish_refuses_bad_input(family_with_sweep, capsys):
    out = family_with_sweep[0]
    assert run(["publish", str(out), "not a repo id!", "--dry-run"]) == 2
    assert "is not a Hub repository id" in capsys.readouterr().err
    assert run(["publish", str(out / "K00-4layers"), "someone/x", "--dry-run"]) == 2
    assert "not a family directory" in capsys.readouterr().err
    (out / "gguf" / "K03-5layers.f16.gguf").unlink()
    assert run(["publish", str(out), "someone/x", "--dry-run"]) == 2
    assert "gguf/K03-5layers.f16.gguf" in capsys.readouterr().err


def test_teacher_licence_and_hub_id_are_found_offline(tmp_path):
    teacher = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc"
    teacher.mkdir(parents=True)
    (teacher / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a model\n")
    assert (teacher_info(teacher).base_model, teacher_info(teacher).license) == ("org/name", "apache-2.0")
    assert teacher_info("org/not-cached").base_model == "org/not-cached"


@pytest.mark.real
def test_offline_teacher_is_smollm2_with_its_licence(real_teacher_dir):
    for spec in ("smollm2-offline", real_teacher_dir):
        info = teacher_info(spec)
        assert (info.base_model, info.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")


@pytest.fixture
def hub_on(monkeypatch):
    """The Hub switched on in this process (the tests switch it off), pointed at a closed local port."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: unreachable
    return constants


def test_publish_without_a_token_fails_before_any_work(tmp_path, capsys, monkeypatch, hub_on):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_on, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert run(["publish", str(tmp_path / "no-such-family"), "someone/x"]) == 2
    assert "needs a Hugging Face token" in capsys.readouterr().err


def test_publish_to_an_unreachable_hub_fails_before_any_work(tmp_path, capsys, monkeypatch, hub_on):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert run(["publish", str(tmp_path / "no-such-family"), "someone/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and "nothing was uploaded" in err
