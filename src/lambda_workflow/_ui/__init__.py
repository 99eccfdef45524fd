"""The local web console (``lambda-workflow ui``): a Starlette app (``app``) over a SQLite
state file or a deployment's DynamoDB table, served by uvicorn on 127.0.0.1; ``command`` is
its subcommand. Starlette, uvicorn and Jinja2 come with the ``ui`` extra."""
