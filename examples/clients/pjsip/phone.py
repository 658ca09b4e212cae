"""
A PJSIP soft phone (the pjsua2 Python module, ``pip install pjsua2-python``)
behind an SPWM agent (docs/quickstart.md).

    python3 phone.py                 # registers, answers every call
    then type on its standard input:
    call sip:bob@example.test | hold | resume | hangup | quit

Change for your site the values in CONFIGURATION below: your address of
record and password, the agent's --sip-listen address 192.168.1.10 (TLS:
port 5061, transport=tls, and the CA of the agent's --sip-tls-cert).
tests/e2e/test_interop.py runs this file as it is, changing only those
values (and OUTBOUND_PROXY to run the second configuration; for a phone
with two interfaces it adds the line that puts the second one in the SDP,
account_config.mediaConfig.transportConfig.publicAddress).
"""

import select
import sys

import pjsua2 as pj

# -- CONFIGURATION -----------------------------------------------------------
ADDRESS_OF_RECORD = "sip:alice@example.test"
USERNAME = "alice"
PASSWORD = "secret-alice"
AGENT = "sip:192.168.1.10:5060;transport=udp"
# True: the agent is the outbound proxy (a pre-loaded Route, "proxies");
# False: the agent is the registrar and proxy address.
OUTBOUND_PROXY = True
# for transport=tls: the CA that issued the agent's --sip-tls-cert
CA_FILE = "/etc/spwm/agent-ca.pem"
# ---------------------------------------------------------------------------


class Call(pj.Call):
    def onCallState(self, prm):
        info = self.getInfo()
        print("call", info.remoteUri, info.stateText, flush=True)
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            phone.call = None

    def onCallMediaState(self, prm):
        for index, media in enumerate(self.getInfo().media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(index)
                devices = pj.Endpoint.instance().audDevManager()
                devices.getCaptureDevMedia().startTransmit(audio)
                audio.startTransmit(devices.getPlaybackDevMedia())


class Account(pj.Account):
    def onRegState(self, prm):
        print("registration", prm.code, prm.reason, flush=True)

    def onIncomingCall(self, prm):
        call = Call(self, prm.callId)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)
        phone.call = call


class Phone:
    call = None


phone = Phone()


def main() -> None:
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.medConfig.noVad = True  # keep RTP flowing in silence
    # keep the sound device open between calls (with the null device PJSIP
    # 2.15 sent only a few packets in a call after it had reopened it)
    config.medConfig.sndAutoCloseTime = -1
    config.logConfig.level = 3
    endpoint.libInit(config)
    for kind in (pj.PJSIP_TRANSPORT_UDP, pj.PJSIP_TRANSPORT_TCP):
        transport = pj.TransportConfig()
        transport.port = 5100  # this phone's own port
        endpoint.transportCreate(kind, transport)
    tls = pj.TransportConfig()
    tls.port = 5101
    tls.tlsConfig.CaListFile = CA_FILE
    tls.tlsConfig.verifyServer = True
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
    endpoint.libStart()
    if not endpoint.audDevManager().getDevCount():
        endpoint.audDevManager().setNullDev()  # no sound card

    account_config = pj.AccountConfig()
    account_config.idUri = ADDRESS_OF_RECORD
    if OUTBOUND_PROXY:
        account_config.regConfig.registrarUri = "sip:" + ADDRESS_OF_RECORD.partition("@")[2]
        account_config.sipConfig.proxies.append(AGENT + ";lr")
    else:
        account_config.regConfig.registrarUri = AGENT
    account_config.regConfig.timeoutSec = 300
    account_config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", USERNAME, 0, PASSWORD))
    account = Account()
    account.create(account_config)

    while True:
        endpoint.libHandleEvents(20)
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if not ready:
            continue
        words = sys.stdin.readline().split()
        if not words:
            continue
        try:
            if words[0] == "quit":
                break
            elif words[0] == "call":
                phone.call = Call(account)
                phone.call.makeCall(words[1], pj.CallOpParam(True))
            elif words[0] == "hold" and phone.call:
                phone.call.setHold(pj.CallOpParam(True))
            elif words[0] == "resume" and phone.call:
                resume = pj.CallOpParam(True)
                resume.opt.flag = pj.PJSUA_CALL_UNHOLD
                phone.call.reinvite(resume)
            elif words[0] == "hangup" and phone.call:
                phone.call.hangup(pj.CallOpParam(True))
        except pj.Error as e:
            print("error:", e.info(), flush=True)
    account.shutdown()
    endpoint.libDestroy()


if __name__ == "__main__":
    main()
