"""The model registry: what the `register@<checkpoint>` stage does with an evaluated checkpoint.

Registration of a new MLflow model version, weights logged or not (version.py); earned promotion
— the `champion` alias moves only on paired evidence, per evaluation scope (promotion.py); the
lineage read from dvc.lock and the training data (lineage.py); and the generated model card
(card.py).

May import: tutorloop.errors, secrets, config, runtime (tracking), data, modeling, eval (the
McNemar test); mlflow lazily. Never components/ or flows/.
"""
