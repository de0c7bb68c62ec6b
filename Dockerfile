# hetserve's image: the gateway (hetserve serve) and, for --emulate deployments, the emulator.
#   docker build -t hetserve:0.1.0 .        (the default --gateway-image of hetserve deploy)
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock . && rm -rf /src
WORKDIR /
EXPOSE 8080
CMD ["hetserve", "--help"]
