"""The stethoscope link: framed PCM protocol, audio sources and a device simulator."""
