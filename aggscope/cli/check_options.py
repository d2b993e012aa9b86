"""``check``'s settings from the command line: the flags' thresholds and cap, then the trainer in use
and its config's response cap (``check``, and the checks inside ``report`` and ``compare``)."""

from typing import Any, Optional


def check_options(max_no_grad_share: Optional[str], max_response_len: Optional[int]) -> Any:
    """The ``CheckOptions`` of the flags (validated before the input is opened)."""
    from aggscope.analysis.check_settings import CheckOptions, NoGradThresholds, parse_max_no_grad_share, parse_max_response_len

    thresholds = NoGradThresholds() if max_no_grad_share is None else parse_max_no_grad_share(max_no_grad_share)
    return CheckOptions(no_grad=thresholds, response_cap=parse_max_response_len(max_response_len))


def with_trainer(options: Any, config: Any, input_format: str, *, cap_given: bool = False) -> Any:
    """The trainer in use (``--trainer`` or the config's, else the one whose dump this is) and, unless
    given, the config's response cap."""
    import dataclasses

    from aggscope.analysis.check_settings import trainer_of_dump
    from aggscope.presets.recorded import RecordedLayout

    if isinstance(config, RecordedLayout):  # the dump's own layout: no trainer config, the dump names the trainer
        config = None
    trainer = config.setup.trainer if config is not None else trainer_of_dump(input_format)
    if cap_given:
        return dataclasses.replace(options, trainer=trainer)
    cap = config.setup.derivation("response_cap") if config is not None else None
    if cap is None or cap.value is None:
        return dataclasses.replace(options, trainer=trainer)
    source = f"the {trainer} config's {', '.join(cap.keys) or 'default'}"
    return dataclasses.replace(options, trainer=trainer, response_cap=int(cap.value), cap_source=source)
