"""Start-up plumbing shared by every steadfast process: JSON logs and the settings base."""
