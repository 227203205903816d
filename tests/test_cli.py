from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command,options", [
    ("serve", ["--host", "--port", "--backend", "--max-waiting-requests", "MODEL"]),
    ("generate", ["--prompt", "--prompts-file", "--stream", "--backend", "--chat"]),
    ("chat", ["--system", "--max-tokens", "--backend"]),
    ("backends", ["--backend"]),
])
def test_help_is_complete(command, options):
    out = subprocess.run([sys.executable, "-m", "quire.cli", command, "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in options:
        assert option in out
    assert "--help" in out


def test_chat_session(llama_dir):
    script = "Hello there\n/reset\none two\n/exit\n"
    res = subprocess.run([sys.executable, "-m", "quire.cli", "chat", "--model", llama_dir,
                          "--num-blocks", "64", "--max-tokens", "5", "--temperature", "0"],
                         input=script, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("> ") >= 3 and "(conversation cleared)" in out


def test_chat_reply_matches_offline_generation(llama_dir):
    from quire import LLM, SamplingParams

    llm = LLM(llama_dir, num_blocks=64)
    (expected,) = llm.chat([{"role": "user", "content": "Hello there"}],
                           SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
    res = subprocess.run([sys.executable, "-m", "quire.cli", "chat", "--model", llama_dir,
                          "--num-blocks", "64", "--max-tokens", "5", "--temperature", "0"],
                         input="Hello there\n", capture_output=True, text=True, timeout=120)
    assert expected.outputs[0].text in res.stdout
