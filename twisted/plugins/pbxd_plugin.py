# twistd finds this module by scanning every twisted/plugins directory on
# sys.path, so it stays tiny: pbxd.tap is only imported when pbxd is run.
from twisted.application.service import ServiceMaker

pbxd = ServiceMaker(
    "pbxd",
    "pbxd.tap",
    "SIP/RTP PBX daemon (run: twistd -n pbxd -c pbxd.yml)",
    "pbxd",
)
