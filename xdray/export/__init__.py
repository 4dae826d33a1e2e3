"""Deployable students: ONNX fp32 and int8, checked against torch, timed, served through MLflow."""
