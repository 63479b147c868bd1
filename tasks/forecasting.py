"""The old import path of `decisions.forecasting`, kept for callers outside the project
(`from tasks.forecasting import forecast`). New code imports `decisions.forecasting`."""

from decisions.forecasting import (
    Forecast,
    ForecastInputError,
    forecast,
    forecast_detail,
    forecast_quantile,
)

__all__ = ["Forecast", "ForecastInputError", "forecast", "forecast_detail", "forecast_quantile"]
