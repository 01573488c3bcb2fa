"""Launchers for real gateway software (OpenSSH sshd, haproxy, stunnel) on loopback.

Each launcher is a context manager that writes a private config into a temporary folder, starts the
daemon in the foreground as a subprocess, waits until its port accepts connections and stops it on
exit. Nothing is installed as a service and nothing is left running.
"""

from gateload.targets.local.process import Daemon, MissingTool, free_port, require_binary, require_root

__all__ = ["Daemon", "MissingTool", "free_port", "require_binary", "require_root"]
