#!/usr/bin/env bash
# The seed's governance, from a shell: tokens, a release, the five prod stages, the 2025 Q4 calendar, the audit
# log. Run from anywhere: bash examples/governance/walkthrough.sh   (state goes to a temporary directory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export RELEASEGATE_HOME=${RELEASEGATE_HOME:-$(mktemp -d)}
rg() { python3 -m releasegate "$@"; }
policy="$here/policy.yaml"
calendar="$here/calendar.yaml"
step() { printf '\n== %s\n' "$*"; }

step "tokens: each printed once, only a hash is stored"
for user in alice bob carol dave erin frank; do
  declare "token_$user=$(rg token new "$user" --policy "$policy" 2>/dev/null)"
done

step "alice registers shop@1.4.0"
RELEASEGATE_TOKEN=$token_alice rg release new shop 1.4.0 --as alice --digest sha256:bf2816be5acdfe62da1d5b0ff224081a64c2f89a2ce8e9d162875a671dcf61e6

step "prod is refused while stages are missing (exit 2, everything listed)"
if rg deploy "$here/shop.yaml" --version 1.4.0 --env prod; then echo "unexpected: allowed"; exit 1; fi

step "the author may sign only the developer stage"
if RELEASEGATE_TOKEN=$token_alice rg approve shop@1.4.0 --stage reviewer --as alice --policy "$policy"; then
  echo "unexpected: allowed"; exit 1
fi
RELEASEGATE_TOKEN=$token_alice rg approve shop@1.4.0 --stage developer --as alice --policy "$policy" \
  --check "unit tests pass" --check "rollback plan written"

step "two reviewers, qa, sre and pm (with their checklists)"
RELEASEGATE_TOKEN=$token_bob rg approve shop@1.4.0 --stage reviewer --as bob --policy "$policy"
RELEASEGATE_TOKEN=$token_carol rg approve shop@1.4.0 --stage reviewer --as carol --policy "$policy"
RELEASEGATE_TOKEN=$token_dave rg approve shop@1.4.0 --stage qa --as dave --policy "$policy"
RELEASEGATE_TOKEN=$token_erin rg approve shop@1.4.0 --stage sre --as erin --policy "$policy" \
  --check "deployment window checked" --check "rollback plan verified"
RELEASEGATE_TOKEN=$token_frank rg approve shop@1.4.0 --stage pm --as frank --policy "$policy" \
  --check "release notes approved"
rg approvals shop@1.4.0 --env prod --policy "$policy"

step "the 2025 Q4 calendar: exam season refuses a minor change, allows config; a hotfix during hotfix week"
if rg calendar check --calendar "$calendar" --at 2025-11-11T03:00 --change minor; then exit 1; fi
rg calendar check --calendar "$calendar" --at 2025-11-11T03:00 --change config
rg calendar check --calendar "$calendar" --at 2025-11-25T14:00 --change hotfix
rg calendar show --calendar "$calendar" --month 2025-11

step "the audit log holds every decision above, hash-chained"
rg audit verify
