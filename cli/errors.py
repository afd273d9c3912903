"""The one exception the CLI turns into a single `dhtmesh: error: ...` line and a non-zero exit."""


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
