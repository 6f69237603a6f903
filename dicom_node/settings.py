"""One typed settings object for the node and the workers.

Sources, highest priority first: environment variables (``GAZEX_`` prefix, ``__`` between
nested keys, e.g. ``GAZEX_NODE__AE_TITLE``), the TOML file named by ``--config`` or
``GAZEX_CONFIG``, then the defaults below. ``GAZEX_HOME`` is the data folder of the
embedded default (database file, spool, broker folder, logs).

Nothing here reads the environment or touches the disk at import time: call
``load_settings`` once at process start and pass the result down.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dicom_node.errors import ConfigError

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII but backslash


def validate_ae_title(value: str) -> str:
    """An AE title: 1-16 characters, no backslash or control characters, not all spaces."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} must be 1-16 printable ASCII characters without backslash"
        )
    return value.strip()


AETitle = Annotated[str, AfterValidator(validate_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Section):
    ae_title: AETitle = "GAZEX"
    bind: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for its PACS
    port: Port = 11112
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 16
    acse_timeout: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 60.0
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    max_pdu: Annotated[int, Field(ge=0)] = 0  # 0: unlimited
    #: Accept associations from AE titles that are not enabled ``source`` peers.
    accept_any_calling_ae: bool = False


class TLSSettings(_Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    #: CA bundle that client certificates must chain to.
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSSettings:
        if self.enabled:
            for key in ("cert_file", "key_file"):
                path = getattr(self, key)
                if path is None or not Path(path).is_file():
                    raise ValueError(f"{key} must name an existing file when TLS is enabled")
            if self.require_client_cert and (self.ca_file is None or not self.ca_file.is_file()):
                raise ValueError("ca_file must name an existing file to require client certs")
        return self


class DatabaseSettings(_Section):
    #: SQLAlchemy URL; default: a SQLite file in GAZEX_HOME.
    url: SecretStr | None = None
    echo: bool = False


class BrokerSettings(_Section):
    #: Celery broker URL; default: a folder queue in GAZEX_HOME (no server to install).
    url: SecretStr | None = None
    analysis_queue: str = "gpu"
    io_queue: str = "io"


class SpoolSettings(_Section):
    path: Path | None = None
    #: Refuse new associations below this much free space (see /readyz).
    min_free_mb: Annotated[int, Field(ge=0)] = 512


class CompletionSettings(_Section):
    #: Seconds after the A-RELEASE of the last instance's association before a study is
    #: complete; per calling AE and per modality overrides (the longest applies).
    quiet_period: Annotated[float, Field(ge=0)] = 2.0
    quiet_period_by_ae: dict[str, Annotated[float, Field(ge=0)]] = {}
    quiet_period_by_modality: dict[str, Annotated[float, Field(ge=0)]] = {}
    #: A study with no new instance for this long is complete even without a release.
    force_complete_after: Annotated[float, Field(gt=0)] = 300.0


class RoutingRule(_Section):
    """Which studies are analysed. Empty lists match anything; ``""`` matches a missing value."""

    name: str
    modalities: list[str] = []
    sop_classes: list[str] = []
    body_parts: list[str] = []
    view_positions: list[str] = []
    calling_aes: list[str] = []
    #: Extra destination peers (by name) for studies matching this rule.
    destinations: list[str] = []


def _default_rules() -> list[RoutingRule]:
    return [
        RoutingRule(
            name="chest-radiographs",
            modalities=["CR", "DX"],
            body_parts=["CHEST", ""],
        )
    ]


class RoutingSettings(_Section):
    rules: list[RoutingRule] = Field(default_factory=_default_rules)


class PeerSeed(_Section):
    """A peer the config file declares; created at start-up when absent."""

    name: str
    ae_title: AETitle
    #: Its DICOM address; leave both out for a peer reached over DICOMweb only.
    host: str | None = None
    port: Port | None = None
    #: Its DICOMweb base URL: results go there by STOW-RS.
    dicomweb_url: str | None = None
    #: What the node presents there: "basic:<user>:<password>" or "bearer:<token>".
    dicomweb_auth: SecretStr | None = None
    roles: list[Literal["source", "destination"]]
    enabled: bool = True


class DeliverySettings(_Section):
    max_attempts: Annotated[int, Field(ge=1)] = 50
    backoff_initial: Annotated[float, Field(gt=0)] = 5.0
    backoff_max: Annotated[float, Field(gt=0)] = 900.0


class HTTPSettings(_Section):
    """The HTTP port: /healthz, /readyz, /metrics, and on the node /dicom-web."""

    enabled: bool = True
    bind: str = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from other hosts
    #: `gazex serve` gives its analysis and I/O workers the next two ports; 0: any free port.
    port: Annotated[int, Field(ge=0, le=65535)] = 8088


class DicomWebSettings(_Section):
    """QIDO-RS, WADO-RS and STOW-RS on the node's HTTP port (PS3.18)."""

    enabled: bool = True
    #: Where the services live on the HTTP port (Orthanc and dcm4chee use /dicom-web too).
    base_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$")] = "/dicom-web"
    #: Answer requests that carry no credentials (as a peer named "anonymous"); off: every
    #: request needs a peer's credential (gazex ae credential).
    allow_anonymous: bool = False
    #: A STOW-RS part larger than this is refused (413) and nothing of it kept.
    max_instance_mb: Annotated[int, Field(ge=1)] = 1024
    #: A STOW-RS request body larger than this is refused (413).
    max_request_mb: Annotated[int, Field(ge=1)] = 8192
    #: QIDO-RS answers at most this many matches per request (the client pages with offset).
    max_results: Annotated[int, Field(ge=1)] = 1000
    #: Origins of browser viewers served from elsewhere (e.g. "https://ohif.hospital.org")
    #: allowed to call the services with their credentials (CORS); none by default.
    cors_origins: list[str] = []


def _scheme_value(code: str) -> str:
    scheme, colon, value = code.partition(":")
    if not (colon and scheme and value):
        raise ValueError(f"{code!r} is not SCHEME:VALUE (e.g. SCT:36118008)")
    return code


class ReviewSettings(_Section):
    """The radiologist's review page under /review on the node's HTTP port."""

    #: Seconds a session lasts at most from its login.
    session_lifetime: Annotated[float, Field(gt=0)] = 12 * 3600.0
    #: Seconds without a request after which a session ends.
    idle_timeout: Annotated[float, Field(gt=0)] = 30 * 60.0
    #: Mark the session cookie Secure even when the request came over plain HTTP (behind a
    #: TLS-terminating proxy that sends no X-Forwarded-Proto); https requests always get it.
    cookie_secure: bool = False
    #: Findings that put a study first in the worklist when present: "SCHEME:VALUE" codes
    #: as the model's results code them (default: SNOMED CT pneumothorax).
    critical_codes: tuple[Annotated[str, AfterValidator(_scheme_value)], ...] = ("SCT:36118008",)
    #: Seconds every failed login waits before its answer.
    login_failure_delay: Annotated[float, Field(ge=0)] = 1.0
    #: Failed logins from one remote host within ``login_failure_window`` seconds after
    #: which that host's logins are refused (429) until the window has passed.
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    login_failure_window: Annotated[float, Field(gt=0)] = 15 * 60.0
    #: The reviewers' organisation in a verified SR (VerifyingOrganization) when the film
    #: names no InstitutionName; default: ``hl7.sending_facility``.
    organization: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class LogSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: The audit trail as JSON lines (the table holds it too); default GAZEX_HOME/logs.
    audit_file: Path | None = None


class HL7Settings(_Section):
    """The RIS that receives ORU^R01 over MLLP; none unless ``host`` is set."""

    host: str | None = None
    port: Port = 2575
    sending_application: str = "GAZEX"
    sending_facility: str = "GAZEX"
    receiving_application: str = "RIS"
    receiving_facility: str = "HOSPITAL"
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    read_timeout: Annotated[float, Field(gt=0)] = 30.0

    @property
    def enabled(self) -> bool:
        return self.host is not None


class ModelSettings(_Section):
    #: Inference backend, by its name in the ``gazex.model_backends`` entry-point group.
    backend: str = "default"
    #: Checkpoint folder; default: the checkpoint shipped in model/checkpoints/default.
    checkpoint: Path | None = None
    #: "cuda", "cuda:1" or "cpu"; default: CUDA when present.
    device: str | None = None
    #: The local Qwen2.5-VL folder a LoRA checkpoint was fine-tuned from (``gazex train
    #: --backbone DIR --lora-rank R``); default: the folder the checkpoint records.
    base_model: Path | None = None


class WorkerSettings(_Section):
    soft_time_limit: Annotated[float, Field(gt=0)] = 300.0
    time_limit: Annotated[float, Field(gt=0)] = 360.0
    max_retries: Annotated[int, Field(ge=0)] = 10
    #: An analysis queued or running longer than this is taken as lost (its worker died or
    #: its message vanished) and handed on again; must exceed ``time_limit``.
    stale_after: Annotated[float, Field(gt=0)] = 420.0
    #: Studies the analysis worker runs through the model in one batch at most; 1 turns
    #: batching off (one study at a time in a prefork child, as before). Default: 8 on CUDA,
    #: 1 on CPU (``workers.batching`` says why and when to batch on a CPU).
    max_batch: Annotated[int, Field(ge=1, le=64)] | None = None
    #: Milliseconds a batch waits, from its first study, for more to arrive (up to
    #: ``max_batch``). Default: 20 on CUDA, 0 on CPU.
    batch_window_ms: Annotated[float, Field(ge=0, le=1000)] | None = None

    @model_validator(mode="after")
    def _limits_in_order(self) -> WorkerSettings:
        if not self.soft_time_limit < self.time_limit < self.stale_after:
            raise ValueError("need soft_time_limit < time_limit < stale_after")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GAZEX_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".local" / "share" / "gazex")
    node: NodeSettings = NodeSettings()
    tls: TLSSettings = TLSSettings()
    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    spool: SpoolSettings = SpoolSettings()
    completion: CompletionSettings = CompletionSettings()
    routing: RoutingSettings = RoutingSettings()
    delivery: DeliverySettings = DeliverySettings()
    http: HTTPSettings = HTTPSettings()
    dicomweb: DicomWebSettings = DicomWebSettings()
    review: ReviewSettings = ReviewSettings()
    log: LogSettings = LogSettings()
    hl7: HL7Settings = HL7Settings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    peers: list[PeerSeed] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    # -- derived locations -------------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite:///{self.home / 'gazex.sqlite3'}"

    @property
    def broker_url(self) -> str:
        if self.broker.url is not None:
            return self.broker.url.get_secret_value()
        return "filesystem://localhost//"  # an explicit host keeps kombu from warning

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded broker (kombu filesystem transport)."""
        return self.home / "broker"

    @property
    def audit_path(self) -> Path:
        return self.log.audit_file or self.home / "logs" / "audit.jsonl"

    @property
    def spool_path(self) -> Path:
        return self.spool.path if self.spool.path is not None else self.home / "spool"

    def quiet_period_for(self, calling_ae: str | None, modality: str | None) -> float:
        candidates = [self.completion.quiet_period]
        if calling_ae in self.completion.quiet_period_by_ae:
            candidates.append(self.completion.quiet_period_by_ae[calling_ae])
        if modality in self.completion.quiet_period_by_modality:
            candidates.append(self.completion.quiet_period_by_modality[modality])
        return max(candidates)


def config_path(config: str | os.PathLike[str] | None = None) -> Path | None:
    """The settings file in use: ``config`` (``--config``), else ``$GAZEX_CONFIG``, else the
    first that exists of ``$XDG_CONFIG_HOME/gazex/gazex.toml`` (``~/.config/...``) and
    ``/etc/gazex/gazex.toml``, so every shell finds the same node without exports."""
    explicit = config if config is not None else os.environ.get("GAZEX_CONFIG")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "gazex" / "gazex.toml", Path("/etc/gazex/gazex.toml")):
        if candidate.is_file():
            return candidate
    return None


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the settings file (``config_path``), the environment and
    overrides.

    Raises ConfigError with one line naming the offending key.
    """
    path = config_path(config)
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        settings = Settings(**data)
        # Command-line overrides ("section__key") beat the environment and the file.
        updates: dict[str, Any] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            name, _, key = dotted.partition("__")
            field = Settings.model_fields[name]
            if key:
                section = updates.get(name, getattr(settings, name))
                updates[name] = type(section).model_validate({**section.model_dump(), key: value})
            else:
                assert field.annotation is not None
                updates[name] = TypeAdapter(field.annotation).validate_python(value)
        return settings.model_copy(update=updates)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        raise ConfigError(f"invalid setting {key}: {error['msg']}") from None
