"""The SCP process: ``server`` assembles and runs it, ``handlers`` answer DIMSE requests,
``receiver`` makes each instance durable and indexes it, ``completion`` decides when a study
has arrived in full and hands it on, ``routing`` says whether it is analysed."""
