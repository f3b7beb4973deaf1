"""advnlp train / eval / attack / compare --task causal-lm on tiny Llama (untied) and Qwen2
(tied) folders: the run folder, completion-only loss, LoRA adapters, resume, the prompt-only
perturbation, and every bad input the issue lists."""
import hashlib
import json
import math
import os

import pytest
import torch

from cli_helpers import read_json, run
from lm_data import rows, save_lm, write_jsonl

ARGS = ["--task", "causal-lm", "--epochs", "2", "--batch-size", "8", "--lr", "5e-3", "--quiet",
        "--max-length", "32"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_lm(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return save_lm(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", rows(60))


@pytest.fixture
def chats(tmp_path):
    return write_jsonl(tmp_path / "chats.jsonl", rows(60, chat=True))


def _folder_digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _hand_completion_loss(model_dir, examples):
    """The token-mean NLL of the completions, computed here from the saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = n = 0
    for e in examples:
        p = tok(e["prompt"])["input_ids"]
        c = tok(e["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        for j in range(len(p), len(p) + len(c)):
            total -= float(logp[j - 1, ids[0, j]])
            n += 1
    return total / n


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_train_full_fine_tuning_writes_the_run_and_learns(kind, llama, qwen2, tmp_path, capsys):
    folder = {"llama": llama, "qwen2": qwen2}[kind]
    train = write_jsonl(tmp_path / "train.jsonl", rows(60))
    test = write_jsonl(tmp_path / "test.jsonl", rows(12, seed=5))
    before = _folder_digest(folder)
    out = tmp_path / "run"
    assert run("train", *ARGS, "--model", folder, "--train", train, "--test", test,
               "--method", "fgm", "--output-dir", out) == 0
    assert _folder_digest(folder) == before  # nothing written into the model folder
    m = read_json(out, "metrics.json")
    assert m["task"] == "causal-lm"
    test_scores = m["final"]["test"]
    # the saved model's completion loss, recomputed here by hand, is the one reported
    want = _hand_completion_loss(str(out / "model"), rows(12, seed=5))
    assert test_scores["completion_loss"] == pytest.approx(want, rel=1e-4)
    assert test_scores["perplexity"] == pytest.approx(math.exp(want), rel=1e-4)
    # learnt something: below the untrained model's loss on the same completions
    assert test_scores["completion_loss"] < _hand_completion_loss(folder, rows(12, seed=5)) - 0.5
    assert (out / "model" / "model.safetensors").exists()
    samples = [json.loads(x) for x in open(out / "samples.jsonl", encoding="utf-8")]
    assert len(samples) == 3 and all({"prompt", "reference", "generated"} <= set(s) for s in samples)
    assert read_json(out, "config.json")["task"] == "causal-lm"
    assert "completion loss" in capsys.readouterr().out


def test_lora_trains_adapters_only_and_merges_on_request(llama, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--model", llama, "--train", pairs, "--lora-r", "4",
               "--merge-lora", "--output-dir", out) == 0
    files = os.listdir(out / "model")
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    cfg = read_json(out, "config.json")
    assert cfg["lora_r"] == 4 and cfg["lora_alpha"] == 8.0
    # the merged copy computes what base + adapters compute
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama)
    adapted = PeftModel.from_pretrained(base, str(out / "model")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model-merged")).eval()
    ids = torch.tensor([[2, 20, 21, 22, 23]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-5)
    # eval loads base + adapters and reproduces the run's test loss
    assert run("eval", str(out), "--attack-samples", "4", "--attack-steps", "2",
               "--epsilons", "0.1,0.5") == 0
    ev = read_json(out, "eval.json")
    m = read_json(out, "metrics.json")
    assert ev["clean"]["completion_loss"] == pytest.approx(m["final"]["test"]["completion_loss"],
                                                           rel=1e-5)


def test_conversations_use_the_chat_template_and_train_on_the_reply_only(llama, chats, tmp_path):
    from advnlp.cli.tasks.causal_lm import data as D
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    row = D.read_conversations(chats)[1]  # with a system message
    e = D.encode(tok, D.render(tok, row), 64)
    batch = D.collate([e], 0)
    labelled = [tok.convert_ids_to_tokens(int(i)) for i, lab in
                zip(batch["input_ids"][0], batch["labels"][0]) if lab != -100]
    assert labelled == row["messages"][-1]["content"].split() + ["</s>"]
    assert tok.convert_ids_to_tokens(list(e.ids[:e.prompt_length]))[-1] == "<|assistant|>"
    out = tmp_path / "run"
    assert run("train", *ARGS, "--model", llama, "--train", chats, "--method", "pgd",
               "--output-dir", out) == 0


def test_eval_and_attack_score_the_prompt_attack(llama, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--model", llama, "--train", pairs, "--method", "none",
               "--output-dir", out) == 0
    assert run("eval", str(out), "--attack-samples", "6", "--attack-steps", "3",
               "--epsilons", "0.1,0.5,2") == 0
    ev = read_json(out, "eval.json")
    curve = ev["robust"]
    assert [p["epsilon"] for p in curve] == [0.0, 0.1, 0.5, 2.0]
    assert curve[0]["broken_share"] == 0.0
    assert curve[-1]["completion_loss"] > curve[0]["completion_loss"]  # the attack climbs
    assert "broken" in capsys.readouterr().out
    assert run("attack", str(out), "--attack", "embedding", "--epsilons", "0.5",
               "--steps", "2", "--limit", "4") == 0
    att = read_json(out, "attack-embedding.json")
    assert att["examples"] == 4 and len(att["curve"]) == 2
    assert run("attack", str(out), "--attack", "char") == 2
    assert "causal-LM run takes --attack embedding" in capsys.readouterr().err


def _train_with_hook(llama, pairs, tmp_path, perturb):
    """FGM's adversarial pass minus the clean pass at the first decoder layer's input, per
    position, for one step of a causal-LM run (--perturb prompt|all)."""
    from advnlp.cli.config import TrainConfig
    from advnlp.cli.data import DataSpec
    from advnlp.cli.engines.loop import train_step
    from advnlp.cli.tasks.causal_lm.run import LMRun

    cfg = TrainConfig(model=llama, method="fgm", task="causal-lm", perturb=perturb,
                      batch_size=4, max_length=32, output_dir=str(tmp_path / perturb),
                      data=DataSpec(train=pairs)).resolved()
    r = LMRun(cfg)
    seen = []
    layer = r.clf.model.model.layers[0]
    h = layer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    idx = list(range(4))
    batch = r.batch(idx)
    train_step(r, idx, batch)
    h.remove()
    clean, adv = seen[0], seen[1]
    return (adv - clean).norm(dim=-1), batch


def test_prompt_only_perturbation_never_touches_completion_positions(llama, pairs, tmp_path):
    moved, batch = _train_with_hook(llama, pairs, tmp_path, "prompt")
    prompt = (batch["attention_mask"] == 1) & (batch["labels"] == -100)
    assert torch.all(moved[~prompt] == 0)  # completion and padding untouched
    assert torch.all(moved[prompt] > 0)
    moved, batch = _train_with_hook(llama, pairs, tmp_path, "all")
    real = batch["attention_mask"] == 1
    # the last real token's embedding reaches no labelled output (it predicts padding), so
    # FGM's gradient, and step, are zero there; every other real token moves
    last = torch.zeros_like(real)
    last[torch.arange(len(real)), real.sum(1) - 1] = True
    assert torch.all(moved[~real | last] == 0) and torch.all(moved[real & ~last] > 0)


def test_resume_gives_the_weights_of_an_uninterrupted_run(llama, pairs, tmp_path, capsys):
    from cli_helpers import sigterm_after_first_step
    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["train", *[a for a in ARGS if a != "--quiet"], "--model", llama, "--train", pairs,
            "--method", "fgm", "--lora-r", "2"]
    assert run(*args, "--output-dir", whole) == 0
    code, err = sigterm_after_first_step([*args, "--output-dir", str(cut)], "step 1/7")
    assert code == 143, err
    assert (cut / "checkpoint.pt").exists() and not (cut / "model").exists()
    assert run("train", "--resume", cut) == 0
    a = load_file(str(whole / "model" / "adapter_model.safetensors"))
    b = load_file(str(cut / "model" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_compare_gives_verdicts_where_a_lower_loss_is_better(llama, pairs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--model", llama, "--train", pairs, "--methods", "none,fgm",
               "--seeds", "2", "--attack-samples", "4", "--attack-steps", "2",
               "--cost-rounds", "0", "--output-dir", out) == 0
    res = read_json(out, "compare.json")
    assert res["task"] == "causal-lm" and res["lower_is_better"] is True
    assert {"completion_loss", "perplexity", "robust_completion_loss@0.5",
            "broken_share@0.5"} <= set(res["metrics"])
    d = res["versus_none"]["fgm"]["completion_loss"]
    assert d["better"] == "lower"
    fgm = {r["seed"]: r for r in res["runs"] if r["method"] == "fgm"}
    none = {r["seed"]: r for r in res["runs"] if r["method"] == "none"}
    diffs = [fgm[s]["completion_loss"] - none[s]["completion_loss"] for s in fgm]
    assert d["mean_difference"] == pytest.approx(sum(diffs) / 2)
    # lower is better: an interval wholly below zero is "helped", wholly above "hurt"
    low, high = d["interval"]
    assert d["verdict"] == ("helped" if high < 0 else "hurt" if low > 0 else
                            "no detectable effect")


@pytest.mark.parametrize("case", ["encoder", "no-template", "empty", "too-long", "targets",
                                  "textcnn", "classifier-flag", "lora-flag-elsewhere",
                                  "no-folder", "no-config",
                                  "trl-elsewhere"])
def test_bad_input_is_one_line_and_exit_2(case, llama, tmp_path, capsys):
    from cli_helpers import save_bert_without_dropout

    pairs = write_jsonl(tmp_path / "p.jsonl", rows(20))
    args = ["train", *ARGS, "--model", llama, "--train", pairs, "--output-dir", tmp_path / "r"]
    want = {}
    if case == "encoder":
        bert = save_bert_without_dropout(tmp_path / "bert", ["a", "b"])
        args[args.index(llama)] = bert
        want = "is not a causal language model"
    elif case == "no-template":
        plain = save_lm(tmp_path / "plain", "llama", chat_template=False)
        args[args.index(llama)] = plain
        args[args.index(pairs)] = write_jsonl(tmp_path / "c.jsonl", rows(20, chat=True))
        want = "has none"
    elif case == "empty":
        bad = rows(20)
        bad[3]["completion"] = "  "
        args[args.index(pairs)] = write_jsonl(tmp_path / "e.jsonl", bad)
        want = "e.jsonl:4: \"completion\" is empty"
    elif case == "too-long":
        args[args.index("32")] = "3"
        want = "raise --max-length"
    elif case == "targets":
        args += ["--lora-r", "2", "--lora-targets", "nothing_like_this"]
        want = "--lora-targets nothing_like_this"
    elif case == "textcnn":
        args[args.index(llama)] = "textcnn"
        want = "--model textcnn classifies or tags"
    elif case == "classifier-flag":
        args += ["--multi-label"]
        want = "does not take --multi-label"
    elif case in ("no-folder", "no-config"):
        folder = tmp_path / "empty"
        if case == "no-config":
            folder.mkdir()
        args[args.index(llama)] = str(folder)
        want = "no such directory" if case == "no-folder" else "no config.json"
    elif case == "lora-flag-elsewhere":
        args = ["train", "--model", "textcnn", "--train", pairs, "--lora-r", "4",
                "--output-dir", tmp_path / "r2"]
        want = "--lora-r is for --task causal-lm"
    else:
        args = ["train", "--train", pairs, "--engine", "trl", "--output-dir", tmp_path / "r2"]
        want = "--engine trl is for --task causal-lm"
    before = _folder_digest(llama)
    capsys.readouterr()  # what saving the test's own folders printed
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _folder_digest(llama) == before


@pytest.mark.parametrize("method", ["fgsm", "pgd", "yopo", "freelb", "freeat", "smart", "vat",
                                    "r3f", "awp", "neftune", "atta"])
def test_every_method_trains_a_causal_lm(method, qwen2, pairs, tmp_path, capsys):
    out = tmp_path / method
    assert run("train", "--task", "causal-lm", "--model", qwen2, "--train", pairs, "--epochs",
               "1", "--batch-size", "8", "--max-length", "32", "--quiet", "--method", method,
               "--output-dir", out) == 0
    m = read_json(out, "metrics.json")
    assert all(math.isfinite(x) for e in m["epochs"] for x in e["step_losses"])
    assert math.isfinite(m["final"]["test"]["completion_loss"])


@pytest.mark.parametrize("engine", ["trainer", "trl"])
@pytest.mark.parametrize("method", ["none", "fgm"])
def test_the_trainer_engines_give_the_loops_weights(engine, method, llama, pairs, tmp_path,
                                                    capsys):
    """--engine trainer (AdversarialTrainer) and --engine trl (AdversarialSFTTrainer, whose
    own compute_loss is the closure) train the plain loop's weights on the same batches."""
    from safetensors.torch import load_file

    args = ["train", "--task", "causal-lm", "--model", llama, "--train", pairs, "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--lr", "5e-3", "--quiet",
            "--method", method]
    assert run(*args, "--output-dir", tmp_path / "loop") == 0
    assert run(*args, "--engine", engine, "--output-dir", tmp_path / "trainer") == 0
    a = load_file(str(tmp_path / "loop" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "trainer" / "model" / "model.safetensors"))
    moved = load_file(str(os.path.join(llama, "model.safetensors")))
    assert not torch.equal(a["model.norm.weight"], moved["model.norm.weight"])  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def test_two_ranks_train_the_weights_of_one_process_with_double_batch(llama, tmp_path):
    """torchrun: each rank's loss is its completion tokens' mean and DDP averages the ranks'.
    Every completion here has the same number of tokens, so that is the global batch's mean,
    and 2 ranks with batch 4 train the weights of one process with batch 8."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    # 55 examples: 6 test, 5 validation, 44 to train on: 5 global batches of 8 and one of 4
    # (2 per rank), so no rank pads its shard with a repeated example
    pairs = write_jsonl(tmp_path / "p.jsonl", rows(55))
    common = ["--task", "causal-lm", "--model", llama, "--train", pairs, "--method", "fgm",
              "--epochs", "1", "--lr", "5e-3", "--max-length", "32", "--device", "cpu", "--quiet"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "advnlp.cli", "train", *common,
                           "--batch-size", "4", "--output-dir", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run("train", *common, "--batch-size", "8", "--output-dir", tmp_path / "one") == 0
    assert read_json(tmp_path / "one", "metrics.json")["train_examples"] == 44
    got = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    want = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert read_json(tmp_path / "ddp", "metrics.json")["final"]["test"]["completion_loss"] == \
        pytest.approx(read_json(tmp_path / "one", "metrics.json")["final"]["test"]["completion_loss"],
                      rel=1e-4)


def test_bf16_autocast_trains_and_scores(qwen2, pairs, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert run("train", *ARGS, "--model", qwen2, "--train", pairs, "--precision", "bf16",
               "--method", "fgm", "--output-dir", out) == 0
    m = read_json(out, "metrics.json")
    assert all(math.isfinite(x) for e in m["epochs"] for x in e["step_losses"])
    assert read_json(out, "config.json")["precision"] == "bf16"


def test_config_of_a_run_retrains_it_to_the_same_weights(llama, pairs, tmp_path, capsys):
    from safetensors.torch import load_file

    first, again = tmp_path / "first", tmp_path / "again"
    assert run("train", *ARGS, "--model", llama, "--train", pairs, "--lora-r", "2",
               "--lora-targets", "q_proj,v_proj", "--perturb", "all", "--output-dir", first) == 0
    assert run("train", "--config", str(first / "config.json"), "--output-dir", again) == 0
    a = load_file(str(first / "model" / "adapter_model.safetensors"))
    b = load_file(str(again / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = read_json(again, "config.json")
    assert cfg["lora_targets"] == ["q_proj", "v_proj"] and cfg["perturb"] == "all"


def test_examples_whose_prompt_fills_max_length_are_dropped_with_a_warning(llama, tmp_path,
                                                                          capsys):
    data = rows(40)
    for r in data[:5]:  # 20 words of prompt: nothing of the completion fits in 16 tokens
        r["prompt"] = " ".join(["what colour is the apple ?"] * 4)
    path = write_jsonl(tmp_path / "long.jsonl", data)
    out = tmp_path / "r"
    args = ["train", *[a if a != "32" else "16" for a in ARGS], "--model", llama,
            "--train", path, "--method", "none", "--output-dir", out]
    assert run(*args) == 0
    err = capsys.readouterr().err
    assert "dropped: the prompt fills --max-length 16 tokens" in err
    m = read_json(out, "metrics.json")
    # the 5 long ones are gone from whichever split they fell in
    assert m["train_examples"] + m["validation_examples"] + m["test_examples"] == 35


def test_compare_refuses_a_discrete_attack_before_training(llama, pairs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--model", llama, "--train", pairs, "--methods", "none,fgm",
               "--attack", "char", "--output-dir", out) == 2
    assert "--attack takes" in capsys.readouterr().err and not out.exists()
