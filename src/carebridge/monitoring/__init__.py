"""Remote patient monitoring: NEWS2, rules, alerts, device fleet health."""
