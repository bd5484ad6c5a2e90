#!/usr/bin/env bash
# The seed's governance, from a shell: the policy and calendar stored in the state, tokens, a release, the five
# prod stages, the 2025 Q4 calendar, an admin's change, the audit log.
# Run from anywhere: bash examples/governance/walkthrough.sh   (state goes to a temporary directory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export RELEASEGATE_HOME=${RELEASEGATE_HOME:-$(mktemp -d)}
rg() { python3 -m releasegate "$@"; }
policy="$here/policy.yaml"
calendar="$here/calendar.yaml"
step() { printf '\n== %s\n' "$*"; }

step "store the policy in the state (the first apply needs no admin: it is recorded with your OS login)"
rg policy apply "$policy"

step "tokens: erin (an admin) gets the first; after it, only an admin issues tokens. Shown once, kept as a hash"
token_erin=$(rg token new erin 2>/dev/null)
for user in alice bob carol dave frank; do
  declare "token_$user=$(RELEASEGATE_TOKEN=$token_erin rg token new "$user" --as erin 2>/dev/null)"
done

step "erin stores the 2025 Q4 calendar: deploys, approvals and freeze checks read the stored copies from now on"
RELEASEGATE_TOKEN=$token_erin rg calendar apply "$calendar" --as erin

step "alice registers shop@1.4.0"
RELEASEGATE_TOKEN=$token_alice rg release new shop 1.4.0 --as alice --digest sha256:bf2816be5acdfe62da1d5b0ff224081a64c2f89a2ce8e9d162875a671dcf61e6

step "what the stored policy and calendar would decide for prod now (plan --env changes nothing)"
rg plan "$here/shop.yaml" --version 1.4.0 --env prod | sed -n '/^governance:/,$p'

step "prod is refused while stages are missing (exit 2, everything listed)"
if rg deploy "$here/shop.yaml" --version 1.4.0 --env prod; then echo "unexpected: allowed"; exit 1; fi

step "the author may sign only the developer stage"
if RELEASEGATE_TOKEN=$token_alice rg approve shop@1.4.0 --stage reviewer --as alice; then
  echo "unexpected: allowed"; exit 1
fi
RELEASEGATE_TOKEN=$token_alice rg approve shop@1.4.0 --stage developer --as alice \
  --check "unit tests pass" --check "rollback plan written"

step "two reviewers, qa, sre and pm (with their checklists)"
RELEASEGATE_TOKEN=$token_bob rg approve shop@1.4.0 --stage reviewer --as bob
RELEASEGATE_TOKEN=$token_carol rg approve shop@1.4.0 --stage reviewer --as carol
RELEASEGATE_TOKEN=$token_dave rg approve shop@1.4.0 --stage qa --as dave
RELEASEGATE_TOKEN=$token_erin rg approve shop@1.4.0 --stage sre --as erin \
  --check "deployment window checked" --check "rollback plan verified"
RELEASEGATE_TOKEN=$token_frank rg approve shop@1.4.0 --stage pm --as frank \
  --check "release notes approved"
rg approvals shop@1.4.0 --env prod

step "the stored calendar: exam season refuses a minor change, allows config; a hotfix during hotfix week"
if rg calendar check --at 2025-11-11T03:00 --change minor; then exit 1; fi
rg calendar check --at 2025-11-11T03:00 --change config
rg calendar check --at 2025-11-25T14:00 --change hotfix
rg calendar show --month 2025-11

step "only an admin changes the policy: bob is refused, erin stores version 2 (the diff goes to the audit log)"
changed=$(mktemp)
sed 's/frank: \[pm\]}/frank: [pm], grace: [qa]}/' "$policy" > "$changed"
if RELEASEGATE_TOKEN=$token_bob rg policy apply "$changed" --as bob; then echo "unexpected: allowed"; exit 1; fi
RELEASEGATE_TOKEN=$token_erin rg policy apply "$changed" --as erin
rg policy history
rm -f "$changed"

step "the audit log holds every decision above, hash-chained"
rg audit verify
