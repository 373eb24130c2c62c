"""Model-from-code entry MLflow executes to build the served model (``mlflow.pyfunc.log_model(python_model=<this
file>)``): the model object is constructed here, never unpickled."""
from mlflow.models import set_model

from recsys.serve.pyfunc import RecsysPyfunc

set_model(RecsysPyfunc())
