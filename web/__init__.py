"""The console process's HTTP layer, the only Flask code: the create_app factory (app.py),
the command line that serves it (cli.py, run as start_web_interface.py), the JSON API and
pages as blueprints, the Socket.IO handlers (live.py, evaluation.py) and the request
guards (security.py, errors.py). Handlers ask training/console/ (the TrainingManager, the
RunStore, evaluation jobs) and never open run files or import MLX themselves."""
