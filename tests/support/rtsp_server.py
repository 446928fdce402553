"""A real RTSP server for the tests: GStreamer's gst-rtsp-server (Debian:
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good and -bad, python3-gi) serving an H.264
MP4 file, without re-encoding, at rtsp://127.0.0.1:PORT/stream, in real time from its start
for each client. Run with Debian's Python (where `gi` lives):

    /usr/bin/python3 tests/support/rtsp_server.py FILE.mp4 PORT

Prints `ready` once listening; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    path, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! h264parse '
                       "! rtph264pay name=pay0 pt=96 config-interval=1 )")
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
