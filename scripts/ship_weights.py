"""Write a training checkpoint as the package's shipped weights (model + metadata only).

    python scripts/ship_weights.py RUN/last.pt src/cgnet/weights/camvid.pt --note "how it was trained"
"""
import argparse

from cgnet import load_model, save_checkpoint


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--note", default="", help="provenance: machine, command, commit, epochs")
    args = p.parse_args()
    model = load_model(args.checkpoint)
    meta = dict(model.meta, provenance=args.note)
    path = save_checkpoint(args.out, model, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
