"""Generated from proto/ by clients/python/generate.sh; do not edit."""
