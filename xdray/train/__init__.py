"""The generic Ray Train + DeepSpeed job: one worker loop that roles (teacher, student, transfer task) plug
into through ``role.Role``."""
