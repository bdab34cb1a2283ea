"""The engine: distributed helpers (`distributed`), evaluation and inference (`evaluate`), the
training configuration (`config`), step (`steps`) and loop (`train`), and the eval/test/demo
commands (`scoring`)."""
