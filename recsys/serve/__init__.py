"""Serving: the shipped artifact as a registered MLflow ``pyfunc`` model (``mlflow models serve`` answers top-k).

``data.py`` id maps + each user's training items (npz, no pickle); ``runtime.py`` picks the fastest measured runtime;
``pyfunc.py`` the request/response contract; ``register.py`` logs and registers the models of a pipeline job.
"""
