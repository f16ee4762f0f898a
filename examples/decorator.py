"""A plain function that runs only once humans approve its arguments (and with their edit).

    NIHIL_OBSTAT_URL=http://127.0.0.1:8000 NIHIL_OBSTAT_TOKEN=nok_... python examples/decorator.py

Then approve (or edit, then approve) "Buy leads" at http://127.0.0.1:8000/queue/. Running it
again finds the same proposal; set RUN_ID to something new to ask again.
"""

import os

from nihil_obstat import ChangesRequested, Rejected, require_approval


@require_approval(checkpoint="data-purchase", title="Buy leads", run_id=os.environ.get("RUN_ID"))
def buy_leads(cost: int, businesses: int, segment: str) -> str:
    print(f"TOOL buy_leads cost={cost} businesses={businesses}", flush=True)
    return f"bought {businesses} {segment} leads for {cost}"


if __name__ == "__main__":
    try:
        print(buy_leads(cost=250, businesses=40, segment="bakeries"))
    except (Rejected, ChangesRequested) as no:
        print(f"not bought: {no}")
