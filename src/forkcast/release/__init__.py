"""The release line on GitHub: image plan and manifest, CI reports, the GitHub client."""
