"""Write embed_nb's example data: a small support knowledge base for invented gadgets.

Every text here is generated from the templates below (no public data set is copied).
Run from the repository root: `python example_data/make_example_data.py`. It writes, under example_data/:
  pairs.jsonl     {query, pos}                 in-batch negatives
  hard_neg.jsonl  {query, pos, neg}            hard negatives (same product other topic, same topic sibling product)
  scored.jsonl    {query, pos, scores}         graded docs for KL distillation (rule-based grades)
  distill.jsonl   {query}                      texts for teacher-embedding distillation (vectors: make_teacher_vectors.py)
  eval/           held-out queries, the whole corpus and qrels in the BEIR layout
Held-out queries ask about (product, topic) pairs that no training line mentions, a quarter of them in a wording
that no training query uses.
"""
import json, random
from pathlib import Path

rng = random.Random(20261126)
OUT = Path(__file__).resolve().parent

BRANDS = ["Norvik", "Halden", "Quorra", "Belmont", "Taviro", "Lumen", "Ostrava", "Kestrel"]
KINDS = {  # kind -> (model prefixes, button name, app name)
    "router": (["AX", "AR"], "WPS", "NetHome"),
    "headphones": (["Q", "QB"], "power", "SoundPilot"),
    "smartwatch": (["W", "WX"], "crown", "PulseSync"),
    "robot vacuum": (["V", "VR"], "home", "CleanPath"),
    "e-bike": (["E", "EB"], "mode", "RideLink"),
    "thermostat": (["T", "TS"], "menu", "ClimaDesk"),
}
COLORS = ["blue", "amber", "white", "green", "red"]
PORTS = ["USB-C", "micro-USB", "magnetic pogo-pin", "barrel-jack"]
SYSTEMS = [["Android", "iOS"], ["Windows", "macOS"], ["Android", "iOS", "Windows"], ["iOS", "macOS"], ["Android"], ["Linux", "Windows"]]
REGIONS = ["the EU", "North America", "Japan", "Australia", "the UK"]

def products():
    out = []
    for kind, (prefixes, button, app) in KINDS.items():
        brand_pool = rng.sample(BRANDS, 3)
        for brand in brand_pool:
            for n in rng.sample([3, 5, 7, 9], 2):  # sibling models with near-identical names
                model = f"{rng.choice(prefixes)}{n}"
                out.append(dict(name=f"{brand} {model} {kind}", short=f"{brand} {model}".lower(), kind=kind, button=button, app=app,
                                hours=rng.choice([6, 8, 12, 18, 24, 30, 40, 72]), years=rng.choice([1, 2, 3, 5]),
                                secs=rng.choice([5, 10, 15, 20]), color=rng.choice(COLORS), grams=rng.choice(range(90, 2400, 37)),
                                price=rng.choice(range(49, 999, 10)), ip=rng.choice(["IP54", "IPX4", "IP67", "IP68", "not water resistant"]),
                                port=rng.choice(PORTS), minutes=rng.choice([45, 60, 90, 120, 180]), systems=rng.choice(SYSTEMS),
                                code=f"E{rng.randint(10, 99)}", region=rng.choice(REGIONS)))
    return out

def ip_text(p):
    if p["ip"] == "not water resistant":
        return f"The {p['name']} is not water resistant: keep it away from rain, sinks and showers, as liquid damage voids the warranty."
    return f"The {p['name']} carries an {p['ip']} rating, so splashes and rain are fine" + (", and it survives being submerged." if p["ip"] in ("IP67", "IP68") else ", but it must not be submerged.")

# topic -> (document template, query templates); {s} is the product's short name
TOPICS = {
    "battery": (lambda p: f"On a full charge the {p['name']} runs for about {p['hours']} hours of normal use; heavy use shortens this.",
                ["how long does the {s} battery last", "{s} battery life in hours", "how many hours can i use my {s} before it needs charging",
                 "does the {s} last a whole day without a charger"]),
    "warranty": (lambda p: f"The {p['name']} is covered by a {p['years']}-year limited warranty against manufacturing defects from the date of purchase.",
                 ["what is the guarantee period on the {s}", "is my {s} still covered if it breaks after a year", "{s} warranty length",
                  "how long is the {s} protected against defects"]),
    "reset": (lambda p: f"To factory reset the {p['name']}, hold the {p['button']} button for {p['secs']} seconds until the light blinks {p['color']}; all settings are erased.",
              ["how do i restore the {s} to factory settings", "wipe all settings on {s}", "{s} factory reset steps",
               "my {s} is acting weird, how do i start over from scratch"]),
    "weight": (lambda p: f"The {p['name']} weighs {p['grams']} grams without accessories.",
               ["how heavy is the {s}", "{s} weight", "what does the {s} weigh", "is the {s} light enough to carry around"]),
    "price": (lambda p: f"The {p['name']} has a recommended retail price of ${p['price']}, taxes not included.",
              ["how much does the {s} cost", "{s} price", "what will i pay for a {s}", "is the {s} expensive"]),
    "water": (ip_text, ["can i use the {s} in the rain", "is the {s} waterproof", "{s} water resistance rating", "what happens if my {s} gets wet"]),
    "charging": (lambda p: f"The {p['name']} charges through its {p['port']} port and goes from empty to full in {p['minutes']} minutes.",
                 ["what cable does the {s} charge with", "how fast does the {s} charge", "{s} charging port type", "how long to fully charge the {s}"]),
    "compatibility": (lambda p: f"The {p['name']} pairs with {', '.join(p['systems'][:-1]) + ' and ' if len(p['systems']) > 1 else ''}{p['systems'][-1]} devices through the {p['app']} app.",
                      ["does the {s} work with my phone", "which operating systems support the {s}", "{s} compatibility",
                       "can i connect the {s} to an iphone"]),
    "firmware": (lambda p: f"Firmware for the {p['name']} is installed from the {p['app']} app under Settings > Device > Update; keep it plugged in while it updates.",
                 ["how do i update the software on the {s}", "{s} firmware update", "where do i find new firmware for my {s}",
                  "the {s} says an update is available, how do i install it"]),
    "error": (lambda p: f"Error {p['code']} on the {p['name']} means a sensor failed its self-test; restart it, and if {p['code']} returns, contact support.",
              ["what does error {code} mean on the {s}", "{s} shows {code}", "{s} error code {code} fix", "my {s} keeps showing {code}"]),
    "availability": (lambda p: f"The {p['name']} is sold in {p['region']} only; units bought elsewhere are not serviced locally.",
                     ["where can i buy the {s}", "is the {s} sold in my country", "{s} availability by region", "can i get the {s} serviced abroad"]),
}

def main():
    prods = products()
    docs, doc_id = [], {}
    for pi, p in enumerate(prods):
        for topic, (make, _) in TOPICS.items():
            doc_id[pi, topic] = f"d{len(docs)}"
            docs.append(make(p))
    keys = list(doc_id)
    rng.shuffle(keys)
    held = set(keys[: len(keys) // 5])  # 20% of (product, topic) pairs are never trained on
    train, evalq = [], []
    for (pi, topic) in keys:
        p = prods[pi]
        for ti, t in enumerate(TOPICS[topic][1]):
            q = t.format(s=p["short"], code=p["code"])
            if (pi, topic) in held: evalq.append((q, pi, topic))
            elif ti < 3: train.append((q, pi, topic))  # the 4th wording of each topic is never trained on
    rng.shuffle(train)
    text = lambda pi, topic: docs[int(doc_id[pi, topic][1:])]

    def negatives(pi, topic):
        p = prods[pi]
        same_product = [text(pi, t) for t in TOPICS if t != topic]
        siblings = [text(j, topic) for j, o in enumerate(prods) if j != pi and o["kind"] == p["kind"]]
        return rng.sample(same_product, 3) + rng.sample(siblings, 3)

    def write(name, rows):
        with open(OUT / name, "w", encoding="utf-8") as f:
            for r in rows: f.write(json.dumps(r, ensure_ascii=False) + "\n")

    write("pairs.jsonl", [{"query": q, "pos": [text(pi, t)]} for q, pi, t in train])
    write("hard_neg.jsonl", [{"query": q, "pos": [text(pi, t)], "neg": negatives(pi, t)} for q, pi, t in train])
    scored = []
    for q, pi, t in train[:400]:
        other_topic = text(pi, rng.choice([x for x in TOPICS if x != t]))
        sibling = text(rng.choice([j for j, o in enumerate(prods) if j != pi and o["kind"] == prods[pi]["kind"]]), t)
        unrelated = text(rng.choice([j for j, o in enumerate(prods) if o["kind"] != prods[pi]["kind"]]), rng.choice(list(TOPICS)))
        scored.append({"query": q, "pos": [text(pi, t), sibling, other_topic, unrelated], "scores": [1.0, 0.4, 0.3, 0.0]})
    write("scored.jsonl", scored)
    write("distill.jsonl", [{"query": q} for q, _, _ in train[:300]])
    (OUT / "eval" / "qrels").mkdir(parents=True, exist_ok=True)
    write("eval/corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": d} for i, d in enumerate(docs)])
    write("eval/queries.jsonl", [{"_id": f"q{i}", "text": q} for i, (q, _, _) in enumerate(evalq)])
    with open(OUT / "eval" / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i, (_, pi, t) in enumerate(evalq): f.write(f"q{i}\t{doc_id[pi, t]}\t1\n")
    print(f"{len(prods)} products, {len(docs)} documents, {len(train)} training queries, {len(evalq)} held-out queries")

if __name__ == "__main__":
    main()
