"""The engine: distributed helpers (`distributed`), the model over a dataset (`inference`: views,
the confusion matrix, prediction files), the training configuration (`config`), step (`steps`),
stopping (`stopping`) and loop (`train`), and the eval/test/demo commands (`commands`)."""
