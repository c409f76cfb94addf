# GPU deployment: the project with its vLLM extra on the vLLM release built for torch 2.11 / CUDA 13.
# Checkpoints are mounted at /checkpoints (build them with `bon build-default` or bring HF checkpoints).
FROM vllm/vllm-openai:v0.26.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bon ./bon
COPY server ./server
COPY models ./models
COPY training ./training
COPY loadtest ./loadtest
# vllm (and its torch) come with the base image; installing the extra only checks the pin.
RUN pip install --no-cache-dir '.[vllm]'

ENV BON_CHECKPOINTS=/checkpoints \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1
VOLUME ["/checkpoints"]
EXPOSE 8000
ENTRYPOINT ["bon", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--policy-backend", "vllm"]
